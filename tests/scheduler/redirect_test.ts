/**
 * The load-aware redirect: the answers themselves (302 URL, .ram / .m3u / .sdp metafiles), then the scheduler's HTTP
 * routes through `app.request()`, with the role started in this process on a ManualClock and real loopback agents
 * whose reports decide which server a player is sent to.
 */
import assert from "node:assert/strict";
import { roleApp } from "../api/_role_app.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import {
  type AdminState,
  type SchedulerSection,
  schedulerSection,
  type ServiceSpec,
} from "../../lib/scheduler/config.ts";
import { metafile, serverUrl } from "../../lib/scheduler/redirect.ts";
import { schedulerRole } from "../../lib/scheduler/role.ts";
import { AgentStub } from "../_support/backends.ts";
import { until } from "../_support/until.ts";

const LO = "127.0.0.1";
const TOKEN = "scheduler-token-0123456789";
const RTSP = "rtsp://{host}:{port}{path}";
const V4 = { host: "10.0.0.5", port: 554 };

Deno.test("metafile answers a plain path with a redirect to the server's URL", () => {
  assert.deepEqual(metafile(RTSP, V4, "/live/cam1", "video"), {
    kind: "redirect",
    url: "rtsp://10.0.0.5:554/live/cam1",
  });
  assert.deepEqual(metafile(RTSP, V4, "/movies/a.mp4", "video"), {
    kind: "redirect",
    url: "rtsp://10.0.0.5:554/movies/a.mp4",
  });
  assert.deepEqual(metafile(RTSP, V4, "/a.ram/b", "video"), {
    kind: "redirect",
    url: "rtsp://10.0.0.5:554/a.ram/b",
  }, "a dot in a folder name is no extension");
});

Deno.test("metafile builds .ram, .m3u and .sdp files that point at the server, the extension dropped", () => {
  assert.deepEqual(metafile(RTSP, V4, "/live/cam1.ram", "video"), {
    kind: "file",
    contentType: "audio/x-pn-realaudio",
    body: "rtsp://10.0.0.5:554/live/cam1\n",
    url: "rtsp://10.0.0.5:554/live/cam1",
  });
  assert.deepEqual(metafile(RTSP, V4, "/live/cam1.M3U", "video"), {
    kind: "file",
    contentType: "audio/x-mpegurl",
    body: "#EXTM3U\nrtsp://10.0.0.5:554/live/cam1\n",
    url: "rtsp://10.0.0.5:554/live/cam1",
  });
  const sdp = metafile(RTSP, V4, "/live/cam1.sdp", "video");
  assert.equal(sdp.kind, "file");
  assert.equal((sdp as { contentType: string }).contentType, "application/sdp");
  assert.equal(
    (sdp as { body: string }).body,
    "v=0\r\no=- 0 0 IN IP4 10.0.0.5\r\ns=video\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\na=control:rtsp://10.0.0.5:554/live/cam1\r\n",
  );
});

Deno.test("metafile and serverUrl put an IPv6 server in brackets in URLs and as IP6 in SDP", () => {
  const v6 = { host: "2001:db8::7", port: 8554 };
  assert.equal(serverUrl(RTSP, v6, "/x"), "rtsp://[2001:db8::7]:8554/x");
  assert.equal(
    serverUrl("http://{host}:{port}/hls{path}/index.m3u8", V4, "/x"),
    "http://10.0.0.5:554/hls/x/index.m3u8",
  );
  const body = (metafile(RTSP, v6, "/x.sdp", "v") as { body: string }).body;
  assert.match(body, /^o=- 0 0 IN IP6 2001:db8::7\r$/m);
  assert.match(body, /^c=IN IP6 2001:db8::7\r$/m);
  assert.match(body, /^a=control:rtsp:\/\/\[2001:db8::7\]:8554\/x\r$/m);
});

const DEFAULTS = (schedulerSection.default as SchedulerSection).rules_service;

function service(
  name: string,
  servers: { port: number; agent?: number; state?: AdminState }[],
  over = {},
): ServiceSpec {
  return {
    name,
    listen: { host: LO, port: 0 },
    servers: servers.map((s) => ({
      address: { host: LO, low: s.port, high: s.port },
      weight: 1,
      agent: s.agent === undefined ? null : { host: LO, port: s.agent },
      maxconn: 0,
      state: s.state ?? "ready",
    })),
    ...DEFAULTS,
    ...over,
  } as ServiceSpec;
}

/** The scheduler role on a ManualClock (its checks run only when the test advances it) behind the status API. */
async function startRole(services: ServiceSpec[]) {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const logger = new Logger({ level: "error", clock, sink: () => {} });
  const metrics = new MetricsRegistry();
  const section = { ...(schedulerSection.default as SchedulerSection), services };
  const role = await schedulerRole.start(section, { nodeName: "s", logger, metrics, clock });
  const app = roleApp("scheduler", role, { clock, metrics, logger, token: TOKEN });
  return {
    app,
    clock,
    /** GET as a client at `ip` (what Deno.serve passes the app as its env). */
    get: (path: string, ip = "192.0.2.1") =>
      app.request(path, {}, { remoteAddr: { transport: "tcp", hostname: ip, port: 40000 } }),
    post: (
      path: string,
      body: unknown,
      headers: Record<string, string> = { authorization: `Bearer ${TOKEN}` },
    ) => app.request(path, { method: "POST", body: JSON.stringify(body), headers }),
    async [Symbol.asyncDispose]() {
      await role.stop(AbortSignal.abort());
    },
  };
}

/** Ports nothing listens on: the redirect never connects, it only names the server. */
function freePorts(n: number): number[] {
  const listeners = Array.from({ length: n }, () => Deno.listen({ hostname: LO, port: 0 }));
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  for (const l of listeners) l.close();
  return ports;
}

Deno.test("GET /redirect sends players to the server whose agent reports the least load, following new reports", async () => {
  await using busy = new AgentStub("30%");
  await using idle = new AgentStub("90%");
  const [p1, p2] = freePorts(2);
  await using env = await startRole([
    service("video", [{ port: p1, agent: busy.port }, { port: p2, agent: idle.port }], {
      picker: "leastload",
      agent_interval: 1000,
      check: { ...DEFAULTS.check, interval: 3_600_000 },
    }),
  ]);
  const polled = async (n: number) => {
    const status = await (await env.get("/scheduler/services/video")).json();
    return status.agent_polls >= n;
  };
  env.clock.advance(500); // both agents' first polls (at 0 and at half the interval)
  await until("both agents to answer", () => polled(2));

  const res = await env.get("/redirect/video/live/cam1");
  assert.equal(res.status, 302);
  assert.equal(res.headers.get("location"), `rtsp://${LO}:${p2}/live/cam1`, "the 90% (idle) server");
  assert.equal(res.headers.get("cache-control"), "no-store");

  busy.reply = "95%";
  idle.reply = "10%";
  env.clock.advance(1000);
  await until("both agents to answer again", () => polled(4));
  const after = await env.get("/redirect/video/live/cam1");
  assert.equal(after.headers.get("location"), `rtsp://${LO}:${p1}/live/cam1`, "now the other one is idle");

  const status = await (await env.get("/scheduler/services/video")).json();
  assert.equal(status.redirects, 2);
  assert.deepEqual(status.servers.map((s: { load_percent: number }) => s.load_percent), [5, 90]);
});

Deno.test("GET /redirect answers .ram, .m3u and .sdp paths with a metafile pointing at the chosen server", async () => {
  const [port] = freePorts(1);
  await using env = await startRole([service("video", [{ port }])]);
  const url = `rtsp://${LO}:${port}/live/cam1`;
  const cases: [string, string, string][] = [
    ["ram", "audio/x-pn-realaudio", `${url}\n`],
    ["m3u", "audio/x-mpegurl", `#EXTM3U\n${url}\n`],
    [
      "sdp",
      "application/sdp",
      `v=0\r\no=- 0 0 IN IP4 ${LO}\r\ns=video\r\nc=IN IP4 ${LO}\r\nt=0 0\r\na=control:${url}\r\n`,
    ],
  ];
  for (const [ext, type, body] of cases) {
    const res = await env.get(`/redirect/video/live/cam1.${ext}`);
    assert.equal(res.status, 200, ext);
    assert.equal(res.headers.get("content-type"), type, ext);
    assert.equal(await res.text(), body, ext);
  }
});

Deno.test("GET /redirect uses the service's URL template", async () => {
  const [port] = freePorts(1);
  await using env = await startRole([
    service("hls", [{ port }], { redirect: "http://{host}:{port}/hls{path}/index.m3u8" }),
  ]);
  const res = await env.get("/redirect/hls/ch/7");
  assert.equal(res.headers.get("location"), `http://${LO}:${port}/hls/ch/7/index.m3u8`);
});

Deno.test("GET /redirect keeps a client address on its server with persistence, as connections do", async () => {
  const ports = freePorts(3);
  await using env = await startRole([
    service("video", ports.map((port) => ({ port })), { picker: "roundrobin", persistence: 60_000 }),
  ]);
  const where = async (ip: string) => (await env.get("/redirect/video/x", ip)).headers.get("location");
  const first = await where("10.1.1.1");
  for (let i = 0; i < 4; i++) assert.equal(await where("10.1.1.1"), first);
  assert.notEqual(await where("10.1.1.2"), first, "another address goes on round the servers");
});

Deno.test("GET /redirect answers 503 when no server can take a client, 404 for an unknown service", async () => {
  const [p1, p2] = freePorts(2);
  await using env = await startRole([
    service("off", [{ port: p1, state: "maint" }, { port: p2, state: "drain" }]),
  ]);
  const res = await env.get("/redirect/off/live/cam1");
  assert.equal(res.status, 503);
  assert.deepEqual(await res.json(), { error: 'No server of service "off" can take a client now' });
  const unknown = await env.get("/redirect/nope/live/cam1");
  assert.equal(unknown.status, 404);
  assert.deepEqual(await unknown.json(), { error: 'No service "nope" (known: off)' });
});

Deno.test("GET /redirect refuses with 400 a path that could break a URL, a header or a metafile line", async () => {
  const [port] = freePorts(1);
  await using env = await startRole([service("video", [{ port }])]);
  for (
    const path of [
      "a%0d%0aSet-Cookie:x",
      "a%20b.ram",
      "a%22b",
      "a%3Cb%3E.sdp",
      "a?b",
      "%C3%A9t%C3%A9",
      "a;b",
      "x".repeat(600),
    ]
  ) {
    const res = await env.get(`/redirect/video/${path}`);
    // "a?b" is a query: the path is "a", which is fine. Everything else must be refused.
    if (path === "a?b") {
      assert.equal(res.status, 302, path);
      continue;
    }
    assert.equal(res.status, 400, path);
    assert.match((await res.json()).error, /letters, digits and \. _ ~ \/ - only/, path);
  }
  const status = await (await env.get("/scheduler/services/video")).json();
  assert.equal(status.redirects, 1, "refused requests pick no server");
});

Deno.test("POST a server's state needs the token, checks the body, and says the change is not persisted", async () => {
  const [p1, p2] = freePorts(2);
  await using env = await startRole([
    service("video", [{ port: p1 }, { port: p2 }], { picker: "roundrobin" }),
  ]);
  const path = `/scheduler/services/video/servers/${LO}:${p1}`;
  const noToken = await env.post(path, { state: "drain" }, {});
  assert.equal(noToken.status, 401);
  const wrongToken = await env.post(path, { state: "drain" }, {
    authorization: "Bearer not-the-token-at-all",
  });
  assert.equal(wrongToken.status, 401);

  for (const body of [{}, { state: "sleep" }, { weight: 257 }, { weight: 1.5 }, "drain"]) {
    const res = await env.post(path, body);
    assert.equal(res.status, 400, JSON.stringify(body));
  }
  assert.equal((await env.post(`/scheduler/services/video/servers/${LO}:1`, { state: "drain" })).status, 404);
  assert.equal(
    (await env.post(`/scheduler/services/nope/servers/${LO}:${p1}`, { state: "drain" })).status,
    404,
  );

  const drained = await env.post(path, { state: "drain", weight: 5 });
  assert.equal(drained.status, 200);
  const body = await drained.json();
  assert.equal(body.state, "drain");
  assert.equal(body.weight, 5);
  assert.equal(body.persisted, false);
  assert.match(body.note, /restart returns to the state and weight in the config/);
  for (let i = 0; i < 4; i++) {
    assert.equal(
      (await env.get("/redirect/video/x")).headers.get("location"),
      `rtsp://${LO}:${p2}/x`,
      "a drained server gets no new client",
    );
  }
  await env.post(path, { state: "ready" });
  const locations = new Set<string | null>();
  for (let i = 0; i < 4; i++) locations.add((await env.get("/redirect/video/x")).headers.get("location"));
  assert.equal(locations.size, 2, "ready again: both servers take turns");
});
