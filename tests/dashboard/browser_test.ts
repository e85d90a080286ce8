/**
 * The dashboard in headless Chromium (Debian's `chromium`, driven by playwright-core from npm, in a process of its
 * own: tests/dashboard/_browser.ts) against a box running every role on loopback: the page loads with no console
 * error, its live chart follows the traffic the test sends, a drain click without the token changes nothing and says
 * why, with the token typed in it drains the server, and a screenshot of each role's section is written under
 * test-output/dashboard/.
 */
import assert from "node:assert/strict";
import { lineReader } from "../_support/lines.ts";
import { requireTools } from "../_support/tools.ts";
import { until } from "../_support/until.ts";
import { dashboardBox, TOKEN } from "./_box.ts";

const OUT = new URL("../../test-output/dashboard/", import.meta.url).pathname;
const DRIVER = new URL("./_browser.ts", import.meta.url).pathname;

Deno.test("the dashboard in Chromium: no console error, a live chart, a drain click, a screenshot per role", async () => {
  const { chromium } = await requireTools("the dashboard's browser test", ["chromium"], "chromium");
  await Deno.mkdir(OUT, { recursive: true });
  await using box = await dashboardBox({ listen: true });
  const driver = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-prompt", DRIVER, box.url, TOKEN, OUT, chromium],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = driver.stdin.getWriter();
  const lines = lineReader(driver.stdout);
  const line = async () => (await lines.next()) ?? "";
  try {
    assert.equal(await line(), "loaded");
    // Traffic through the relay between two of the history's samples: the page's next reload draws it.
    box.clock.advance(2000);
    await box.send(box.relayIn, 40);
    await until("the relay counted the datagrams", async () => {
      const status = await (await box.get("/status")).json();
      return status.roles.relay.relays.video.rx_packets === 40;
    });
    box.clock.advance(2000);
    await writer.write(new TextEncoder().encode("go\n"));
    const result = JSON.parse(await line());
    assert.equal(result.error, undefined, result.error);
    assert.deepEqual(result.problems, [], "no console error");
    assert.match(result.chartBefore, /no data yet/);
    assert.ok(result.chartPaths >= 1, "the live chart has a line");
    assert.match(result.noticeWithoutToken, /token/);
    assert.match(result.noticeWithToken, /drain/);
    assert.equal(result.tokenInPage, false);
    const status = await (await box.get("/status")).json();
    const servers = status.roles.scheduler.services.web.servers as { server: string; admin: string }[];
    assert.equal(servers.find((s) => s.server === result.server)?.admin, "drain");
    assert.equal(
      servers.filter((s) => s.admin === "drain").length,
      1,
      "the click without the token changed nothing",
    );
    for (const role of ["scheduler", "relay", "node", "agent", "page"]) {
      assert.ok((await Deno.stat(`${OUT}${role}.png`)).size > 1000, `${role}.png`);
    }
  } finally {
    await writer.close().catch(() => {});
    try {
      driver.kill("SIGKILL");
    } catch { /* ended */ }
    await driver.status;
    await lines.cancel();
  }
});
