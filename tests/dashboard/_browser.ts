/**
 * The browser side of tests/dashboard/browser_test.ts, in a process of its own: playwright-core reads /proc files
 * that Deno lets only --allow-all read, which the test runner does not have. Arguments: the dashboard's URL, the
 * token, the screenshot folder, the Chromium executable. It talks in lines: it writes `loaded` and waits for `go`
 * (the test sends traffic and moves the box's clock in between), then drives the page and writes one JSON line with
 * what it saw.
 */
import { lineReader } from "../_support/lines.ts";

// Only as a program: `deno test tests/dashboard/` loads this file as a module too, and playwright-core's first load
// asks for permissions the test runner does not have.
if (import.meta.main) await drive(Deno.args);

async function drive([url, token, out, executable]: readonly string[]): Promise<never> {
  const { chromium } = await import("playwright-core");
  const stdin = lineReader(Deno.stdin.readable);
  const say = (line: string) => console.log(line);

  const browser = await chromium.launch({ executablePath: executable, args: ["--no-sandbox"] });
  const result: Record<string, unknown> = { problems: [] as string[] };
  const problems = result.problems as string[];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(`console: ${m.text()}`);
    });
    page.on("pageerror", (e) => problems.push(`page: ${e.message}`));
    await page.goto(`${url}/`);
    result.chartBefore = await page.locator("#chart-relay-video").innerHTML();
    say("loaded");
    if ((await stdin.next()) !== "go") throw new Error("expected go");
    // Expressions run in the page, given as text.
    await page.waitForFunction(
      `!document.querySelector("#chart-relay-video")?.innerHTML.includes("no data yet")`,
      undefined,
      { timeout: 10_000 },
    );
    result.chartPaths = await page.locator("#chart-relay-video g.series path").count();
    const server = await page.locator("#scheduler tr[data-server]").first().getAttribute("data-server");
    result.server = server;
    const drain = () =>
      page.locator(`#scheduler tr[data-server="${server}"] button[data-state="drain"]`).click();
    await drain();
    await page.waitForFunction(`document.querySelector("#notice")?.textContent?.includes("token")`);
    result.noticeWithoutToken = await page.locator("#notice").textContent();
    await page.fill("#token", token);
    await page.click("#token-form button[type=submit]");
    await drain();
    // The row's own buttons say "drain" already: what tells the click's answer is the notice, which the page rewrites
    // once the POST has been answered (with the server's name, or "Refused").
    await page.waitForFunction(
      `/ of |Refused/.test(document.querySelector("#notice")?.textContent ?? "")`,
      undefined,
      { timeout: 10_000 },
    );
    result.noticeWithToken = await page.locator("#notice").textContent();
    result.tokenInPage = (await page.content()).includes(token);
    for (const role of ["scheduler", "relay", "node", "agent"]) {
      await page.locator(`#${role}`).screenshot({ path: `${out}${role}.png` });
    }
    await page.screenshot({ path: `${out}page.png`, fullPage: true });
  } catch (error) {
    result.error = String(error);
  } finally {
    await browser.close();
  }
  say(JSON.stringify(result));
  Deno.exit(0);
}
