/**
 * The dashboard at GET / through the appliance's own status app (no listener: its handler is called directly), with
 * the real roles running on loopback: every role's section renders from real status data, names a user controls are
 * escaped, the token is never in the page, the session's graph and the charts are drawn, the history is bounded.
 */
import assert from "node:assert/strict";
import { createApp } from "../../lib/api/app.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { History } from "../../lib/dashboard/history.ts";
import { lineChart } from "../../lib/dashboard/charts.ts";
import { freeUdpPort } from "../_support/ports.ts";
import { dashboardBox, EVIL, TOKEN } from "./_box.ts";

Deno.test("the dashboard renders every role's section from the box's real status, escaped, without the token", async () => {
  await using box = await dashboardBox();
  // Text an uploaded program controls (its error) reaches the page through its sandbox's last error.
  const form = new FormData();
  const evilInput = freeUdpPort();
  form.append(
    "program",
    new File(
      [`Project evil;\n{ AP name="E" ref=upload.evil; inputs = in(DIPRONN_INPUT(${evilInput})); }\n`],
      "e.dipronn",
    ),
  );
  form.append(
    "module",
    new File([
      `export const ports = { inputs: ["in"], outputs: [] };\nexport function handle() { throw new Error(${
        JSON.stringify(EVIL)
      }); }\n`,
    ], "evil.js"),
  );
  const up = await box.get("/node/sessions", {
    method: "POST",
    body: form,
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  assert.equal(up.status, 201, await up.text());
  await box.send(evilInput, 1);
  for (let i = 0; i < 300; i++) {
    const s = await (await box.get("/node/sessions/evil")).json();
    if (s.aps[0].sandbox.last_error) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  const joined = await box.get("/relay/reflectors/lecture/participants", {
    method: "POST",
    body: JSON.stringify({ address: "127.0.0.1:40000" }),
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
  });
  assert.equal(joined.status, 201, await joined.text());
  const res = await box.get("/");
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /text\/html/);
  const page = await res.text();
  for (const id of ["scheduler", "relay", "node", "agent"]) {
    assert.match(page, new RegExp(`<section id="${id}"`));
  }
  // The scheduler's servers, a row each, with their buttons; the service's name escaped wherever it appears.
  assert.equal((page.match(/<tr data-server=/g) ?? []).length, 2);
  assert.equal((page.match(/data-action="admin"/g) ?? []).length, 6);
  assert.ok(!page.includes(EVIL), "a user's name is never markup");
  assert.ok(
    page.includes("&lt;img src=x onerror=alert(1)&gt;") || page.includes("&lt;img"),
    "it is shown escaped",
  );
  assert.ok(!page.includes(TOKEN), "the token is not in the page");
  // The relay and the reflector; the session's graph with its three APs and two wires, the VM group's box dashed.
  assert.match(page, /<tr data-relay="video">/);
  assert.match(page, /data-reflector="lecture"/);
  assert.match(page, /<td>127\.0\.0\.1:40000<\/td><td>api<\/td>/);
  assert.equal(
    (page.match(/<g class="ap[^"]*" data-ap=/g) ?? []).length,
    4,
    "three APs of lecture, one of evil",
  );
  assert.equal((page.match(/class="wire"/g) ?? []).length, 2);
  assert.match(page, /<g class="ap vm" data-ap="Fw">/);
  // The worker VM group's access as the node gave it: a forwarder needs neither net nor files.
  assert.match(page, /<tr data-vm="vm1">.*?worker · net no · read no · write no · ffi no · in flight \d+ ?B/);
  assert.match(page, /<text class="input"[^>]*>IN\(\d+\) →/);
  // No script or style from elsewhere: everything the page needs is in it.
  assert.doesNotMatch(page, /<script[^>]+src=|<link[^>]+href="(?!data:)|https?:\/\/(?!www\.w3\.org)/);
});

Deno.test("the dashboard's charts follow the box's traffic as the history samples it", async () => {
  await using box = await dashboardBox();
  box.clock.advance(2000);
  await box.send(box.input, 50);
  await box.send(box.relayIn, 30);
  // The status figures are the roles' own: wait until the datagrams are counted, then take a sample.
  for (let i = 0; i < 200; i++) {
    const status = await (await box.get("/status")).json();
    const video = status.roles.relay.relays.video;
    const sockets = status.roles.node.sessions.lecture.sockets;
    if (video.rx_packets === 30 && sockets[0].rx_packets === 50) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  box.clock.advance(2000);
  const main = await (await box.get("/dashboard/main")).text();
  const session = chart(main, "chart-session-lecture");
  assert.match(session, /<g class="series" data-name="packets\/s in"/);
  // 50 datagrams in the 2 s between two samples: 25/s, at the chart's last point.
  assert.match(session, /<path d="M[^"]+"/);
  const status = await (await box.get("/status")).json();
  assert.ok(status.history.series > 0 && status.history.samples >= 3, JSON.stringify(status.history));
  // Per AP: the duplicator took the 50 datagrams in the same 2 s.
  assert.match(main, /<tr data-ap="In"><td>In<\/td><td>localservice.duplicator<\/td><td><\/td><td>25<\/td>/);
  const relay = chart(main, "chart-relay-video");
  assert.match(relay, /data-name="packets\/s in"/);
  assert.doesNotMatch(relay, /no data yet/);
  // bits/s on an axis of their own: 30 datagrams of 100 B in 2 s are 12k bits/s in, at the chart's top.
  const bits = chart(main, "chart-relay-bits-video");
  assert.deepEqual(seriesNames(bits), ["bits/s in", "bits/s out"]);
  assert.match(bits, /<path d="M[^"]+"/);
  assert.match(bits, />12k<\/text>/);
  assert.match(main, /<tr data-relay="video">(?:<td>[^]*?<\/td>){5}<td>12k<\/td>/);
  assert.deepEqual(seriesNames(chart(main, "chart-relay-dropped-video")), ["dropped/s"]);
  assert.deepEqual(seriesNames(chart(main, "chart-scheduler-bits-web")), ["bits/s in", "bits/s out"]);
  assert.ok(!seriesNames(chart(main, "chart-scheduler-web")).some((x) => x.startsWith("bits")));
});

Deno.test("the history keeps at most its series and points, whatever the box runs", () => {
  const clock = new ManualClock(0);
  const sessions: Record<string, unknown> = {};
  for (let i = 0; i < 400; i++) sessions[`s${i}`] = { sockets: [{ rx_packets: i }], aps: [] };
  const history = new History({ clock, status: () => ({ node: { sessions } }), maxSeries: 100, points: 10 });
  for (let t = 0; t < 50; t++) {
    history.sample();
    clock.advance(1000);
  }
  const s = history.status();
  assert.equal(s.series, 100);
  assert.ok(s.refused_series > 0);
  for (const series of history.series("session/")) assert.ok(series.points.length <= 10);
});

Deno.test("lineChart draws one group per series with its measured points, escaped", () => {
  const svg = lineChart(
    [{ name: "a<b>", points: [[1, 2], [2, 4], [3, NaN]] }, { name: "c", points: [[1, 1]] }],
    { title: "t & u", x: "linear", points: true },
  );
  assert.equal((svg.match(/<g class="series"/g) ?? []).length, 2);
  assert.match(svg, /data-name="a&#60;b&#62;"/);
  assert.equal((svg.match(/<circle/g) ?? []).length, 3, "a point that is not a number is a gap");
  assert.match(svg, /t &#38; u/);
});

/** The names of the series a chart draws. */
function seriesNames(svg: string): string[] {
  return [...svg.matchAll(/<g class="series" data-name="([^"]*)"/g)].map((m) => m[1]);
}

/** The SVG element with `id` in `html`. */
function chart(html: string, id: string): string {
  const at = html.indexOf(`id="${id}"`);
  assert.ok(at >= 0, `no chart ${id}`);
  return html.slice(at, html.indexOf("</svg>", at));
}

Deno.test("the node section shows a syncer's delay and offsets and a transcoder's state", async () => {
  const clock = new ManualClock(0);
  const node = {
    budgets: {},
    sessions: {
      lecture: {
        name: "lecture",
        aps: [
          {
            name: "Sync_high",
            kind: "localservice.syncer",
            vm: null,
            inputs: [{ name: "in1", packets: 5, from: null }, { name: "in2", packets: 3, from: null }],
            outputs: [],
            errors: 0,
            syncer: {
              state: "running",
              delay_ms: 1012.5,
              release_late: 2,
              inputs: [
                { name: "in1", alignment: "sender_reports", offset_ms: 0, late: 1, dropped_max_delay: 0 },
                { name: "in2", alignment: "offset", offset_ms: 40, late: 0, dropped_cap: 4 },
              ],
            },
          },
          {
            name: "Transcode",
            kind: "localservice.transcoder",
            vm: null,
            inputs: [],
            outputs: [],
            errors: 0,
            transcoder: {
              state: "running",
              progress: { fps: 25, speed: "1x", bitrate_kbps: 256 },
              ffmpeg: { restarts: 1 },
            },
          },
        ],
        vms: [],
      },
    },
  };
  const app = pageApp(clock, { node });
  const page = await (await app.request("/dashboard/main")).text();
  assert.match(
    page,
    /running · D 1\.01k ms · in1: sender_reports, offset 0 ms; in2: offset, offset 40 ms · late 1 · dropped 4 · released late 2/,
  );
  assert.match(page, /running · 25 fps · speed 1x · 256 kb\/s · restarts 1/);
});

Deno.test("the node section shows a VM group's whole limits: a sandbox's, a worker's permissions and bytes in flight", async () => {
  const clock = new ManualClock(0);
  const node = {
    budgets: {},
    sessions: {
      lecture: {
        name: "lecture",
        aps: [],
        vms: [
          {
            name: "uploaded",
            ref: "img",
            aps: ["U"],
            sandbox: {
              state: "running",
              restarts: 0,
              limits: { heap_mb: 64, memory_mb: 256, deadline_ms: 50, max_in_flight: 8, cpu_share: 0.5 },
            },
          },
          {
            name: "uncapped",
            ref: "img",
            aps: ["V"],
            sandbox: {
              state: "running",
              limits: { heap_mb: 32, memory_mb: 128, deadline_ms: 20, max_in_flight: 4, cpu_share: 0 },
            },
          },
          {
            name: "workers",
            ref: "img",
            aps: ["W"],
            state: "running",
            isolate: "worker",
            permissions: { net: true, ffi: false, read: ["/var/lib/edgenode"], write: false },
            in_flight_bytes: 3000,
            dropped_in: 0,
            dropped_out: 0,
          },
        ],
      },
    },
  };
  const page = await (await pageApp(clock, { node }).request("/dashboard/main")).text();
  const row = (vm: string) => {
    const at = page.indexOf(`<tr data-vm="${vm}">`);
    assert.ok(at >= 0, `a row for ${vm}`);
    return page.slice(at, page.indexOf("</tr>", at));
  };
  assert.match(
    row("uploaded"),
    /heap 64 MiB · memory 256 MiB · deadline 50 ms · in flight ≤ 8 batches · cpu 0\.5 of a core/,
  );
  assert.match(
    row("uncapped"),
    /heap 32 MiB · memory 128 MiB · deadline 20 ms · in flight ≤ 4 batches · cpu not capped/,
  );
  assert.match(
    row("workers"),
    /worker · net yes · read \/var\/lib\/edgenode · write no · ffi no · in flight 3k ?B/,
  );
});

Deno.test("the dashboard says which config generation runs and when a reload was refused, escaped", async () => {
  const clock = new ManualClock(0);
  const config = {
    source: "/etc/edgenode.yaml",
    generation: 3,
    last_reload: {
      ok: false,
      trigger: "SIGHUP",
      at: "2026-12-04T14:00:00.000Z",
      errors: [`/etc/edgenode.yaml:4:9: name: ${EVIL}`, "/etc/edgenode.yaml:7:3: second"],
    },
  };
  const app = pageApp(clock, {}, { process: { config } });
  const page = await (await app.request("/dashboard/main")).text();
  assert.match(page, /config generation 3/);
  assert.match(
    page,
    /last reload refused \(SIGHUP, 2026-12-04T14:00:00\.000Z\): \/etc\/edgenode\.yaml:4:9: name: /,
  );
  assert.match(page, /\(\+1 more\)/);
  assert.ok(!page.includes(EVIL), "the error text is escaped");
});

/** A status app whose dashboard shows `roles` (and `process`) as they are given. */
function pageApp(
  clock: ManualClock,
  roles: Record<string, unknown>,
  o: { name?: string; process?: Record<string, unknown>; token?: string; history?: History } = {},
) {
  const process = o.process;
  return createApp({
    name: o.name ?? "n",
    version: "t",
    clock,
    startedAt: 0,
    metrics: new MetricsRegistry(),
    roles: () => roles,
    ...(process ? { process: () => process } : {}),
    token: o.token ?? null,
    maxBody: 1024,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    history: o.history ?? new History({ clock, status: () => roles }),
  });
}

Deno.test("the dashboard shows every name and text a user controls as text, never as markup", async () => {
  // One hostile string per field, tagged with the field so that each can be found escaped.
  const evil = (field: string) => `<x${field} onerror=1>"'&`;
  const fields = [
    "box",
    "service",
    "listen",
    "picker",
    "server",
    "detail",
    "reply",
    "relay",
    "rlisten",
    "reflector",
    "data",
    "participant",
    "origin",
    "session",
    "ap",
    "kind",
    "vm",
    "syncerinput",
    "alignment",
    "speed",
    "stderr",
    "vmname",
    "vmap",
    "vmstderr",
    "perm",
    "agentsource",
    "agenterror",
    "trigger",
    "reload",
  ];
  const e = evil;
  const roles = {
    scheduler: {
      services: {
        [e("service")]: {
          listen: e("listen"),
          picker: e("picker"),
          accepted: 1,
          servers: [
            {
              server: e("server"),
              state: "up",
              admin: "ready",
              last_check: { ok: false, detail: e("detail"), at: "2026-12-04T12:00:00.000Z" },
              last_agent: { reply: e("reply") },
            },
          ],
        },
      },
    },
    relay: {
      relays: {
        [e("relay")]: { state: "running", listen: e("rlisten"), targets: [], rx_packets: 1, rx_bytes: 9 },
      },
      reflectors: {
        [e("reflector")]: {
          data: e("data"),
          registration: "127.0.0.1:1",
          state: "running",
          participants: [{ address: e("participant"), origin: e("origin"), sent: 1 }],
        },
      },
    },
    node: {
      budgets: {},
      sessions: {
        [e("session")]: {
          name: e("session"),
          sockets: [{ rx_packets: 1 }],
          aps: [
            {
              name: e("ap"),
              kind: e("kind"),
              vm: e("vm"),
              inputs: [{ name: "in", packets: 1, from: "DIPRONN_INPUT(5000)" }],
              outputs: [{ to: ["DIPRONN_OUTPUT(127.0.0.1:9)"], packets: 1 }],
              errors: 0,
              syncer: {
                state: "running",
                delay_ms: 5,
                inputs: [{ name: e("syncerinput"), alignment: e("alignment") }],
              },
            },
            {
              name: "T",
              kind: "localservice.transcoder",
              vm: null,
              inputs: [],
              outputs: [],
              transcoder: { state: "running", progress: { speed: e("speed") } },
            },
            {
              name: "S",
              kind: "upload.s",
              vm: null,
              inputs: [],
              outputs: [],
              sandbox: { state: "failed", last_error: e("stderr"), stderr: [e("stderr")] },
            },
          ],
          vms: [
            {
              name: e("vmname"),
              aps: [e("vmap")],
              sandbox: { state: "running", last_error: e("vmstderr"), stderr: [e("vmstderr")], limits: {} },
            },
            { name: "w", aps: [], isolate: "worker", permissions: { read: [e("perm")] }, in_flight_bytes: 0 },
          ],
        },
      },
    },
    agent: { admin: "ready", listen: "127.0.0.1:1", source: e("agentsource"), last_error: e("agenterror") },
  };
  const clock = new ManualClock(0);
  const history = new History({ clock, status: () => roles });
  for (let i = 0; i < 3; i++, clock.advance(2000)) history.sample();
  const token = "api-token-never-shown-0123";
  const app = pageApp(clock, roles, {
    name: e("box"),
    token,
    history,
    process: {
      config: {
        generation: 2,
        last_reload: {
          ok: false,
          trigger: e("trigger"),
          at: "2026-12-04T12:00:00.000Z",
          errors: [e("reload")],
        },
      },
    },
  });
  for (const path of ["/", "/dashboard/main"]) {
    const page = await (await app.request(path)).text();
    assert.doesNotMatch(page, /<x[a-z]/, `${path}: no hostile element`);
    assert.ok(!page.includes(`"'&`), `${path}: no raw quote or ampersand from a name`);
    // No attribute named onerror: with the quoted values taken out, what is left of each tag is names only.
    for (const tag of page.match(/<[a-zA-Z][^>]*>/g) ?? []) {
      assert.doesNotMatch(tag.replace(/"[^"]*"/g, '""'), /\sonerror/, tag);
    }
    assert.ok(!page.includes(token), `${path}: the API token is not in the page`);
    const shown = (f: string) => page.includes(`&lt;x${f} `) || page.includes(`&#60;x${f} `);
    // The box's name is the page's title and heading, not part of the live part.
    const missing = fields.filter((f) => (f !== "box" || path === "/") && !shown(f));
    assert.deepEqual(missing, [], `${path}: every field is shown, escaped`);
  }
});
