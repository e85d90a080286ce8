import assert from "node:assert/strict";
import { type AppDeps, createApp } from "../../lib/api/app.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";

const STARTED = Date.UTC(2024, 0, 2, 3, 4, 5);
const TOKEN = "s3cret-token";

function setup(overrides: Partial<AppDeps> = {}) {
  const clock = new ManualClock(STARTED);
  const lines: string[] = [];
  const logger = new Logger({ level: "info", clock, sink: (line) => lines.push(line) });
  const deps: AppDeps = {
    name: "edge-7",
    version: "0.1.0",
    clock,
    startedAt: STARTED,
    metrics: new MetricsRegistry(),
    roles: () => ({ relay: { sessions: 2, packets: 10 } }),
    token: null,
    maxBody: 64,
    logger,
    ...overrides,
  };
  return { app: createApp(deps), clock, lines, logger };
}

function putLevel(body: BodyInit, headers: Record<string, string> = {}): RequestInit {
  return { method: "PUT", body, headers: { "content-type": "application/json", ...headers } };
}

const auth = { authorization: `Bearer ${TOKEN}` };

/** A body with no content-length: the server only learns its size by reading it. */
function streamOf(chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
}

Deno.test("createApp GET /healthz answers 200 ok", async () => {
  const { app } = setup();
  const res = await app.request("/healthz");
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "ok\n");
});

Deno.test("createApp GET /status shows name, version, uptime from the clock and the roles", async () => {
  let sessions = 2;
  const { app, clock } = setup({ roles: () => ({ relay: { sessions } }) });
  const first = await app.request("/status");
  assert.equal(first.status, 200);
  assert.match(first.headers.get("content-type") ?? "", /^application\/json/);
  assert.deepEqual(await first.json(), {
    name: "edge-7",
    version: "0.1.0",
    started_at: "2024-01-02T03:04:05.000Z",
    uptime_seconds: 0,
    log_level: "info",
    roles: { relay: { sessions: 2 } },
  });

  clock.advance(90_500);
  sessions = 3;
  const later = await (await app.request("/status")).json();
  assert.equal(later.uptime_seconds, 90.5);
  assert.deepEqual(later.roles, { relay: { sessions: 3 } }, "roles are read on every request");
});

Deno.test("createApp GET /metrics serves Prometheus text with the request counters", async () => {
  const { app } = setup();
  await app.request("/healthz");
  await app.request("/nope");
  const res = await app.request("/metrics");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const text = await res.text();
  assert.match(text, /^# TYPE edgenode_http_requests_total counter$/m);
  assert.match(text, /^edgenode_http_requests_total 2$/m);
  assert.match(text, /^edgenode_http_client_errors_total 1$/m);
  assert.match(text, /^edgenode_http_server_errors_total 0$/m);
});

Deno.test("createApp answers an unknown route with 404 JSON", async () => {
  const { app } = setup();
  const res = await app.request("/nope");
  assert.equal(res.status, 404);
  assert.deepEqual(await res.json(), { error: "No route GET /nope" });
});

Deno.test("createApp PUT /log-level is 403 when no token is configured", async () => {
  const { app, logger } = setup({ token: null });
  const res = await app.request("/log-level", putLevel('{"level":"debug"}', auth));
  assert.equal(res.status, 403);
  assert.match((await res.json()).error, /set status\.token/);
  assert.equal(logger.level, "info");
});

Deno.test("createApp PUT /log-level is 401 with WWW-Authenticate without a bearer token", async () => {
  const { app, logger } = setup({ token: TOKEN });
  const res = await app.request("/log-level", putLevel('{"level":"debug"}'));
  assert.equal(res.status, 401);
  assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="edgenode"');
  assert.deepEqual(await res.json(), { error: "Missing or wrong bearer token" });
  assert.equal(logger.level, "info");
});

Deno.test("createApp PUT /log-level is 401 with a wrong token", async () => {
  const { app, logger } = setup({ token: TOKEN });
  for (
    const authorization of [
      "Bearer wrong",
      `Bearer ${TOKEN}x`,
      `Bearer ${TOKEN.slice(0, -1)}`,
      `Basic ${TOKEN}`,
      TOKEN,
      "Bearer ",
    ]
  ) {
    const res = await app.request("/log-level", putLevel('{"level":"debug"}', { authorization }));
    assert.equal(res.status, 401, authorization);
    assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="edgenode"');
  }
  assert.equal(logger.level, "info");
});

Deno.test("createApp PUT /log-level with the right token changes the level and says it is not persisted", async () => {
  const { app, logger, lines } = setup({ token: TOKEN });
  const res = await app.request("/log-level", putLevel('{"level":"debug"}', auth));
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.level, "debug");
  assert.equal(body.persisted, false);
  assert.equal(typeof body.note, "string");
  assert.equal(logger.level, "debug");
  assert.match(lines.at(-1) ?? "", /level=info component=main msg="log level changed" level=debug$/);

  const status = await (await app.request("/status")).json();
  assert.equal(status.log_level, "debug");
});

Deno.test("createApp PUT /log-level rejects a bad body with 400", async () => {
  const { app, logger } = setup({ token: TOKEN });
  for (const body of ["not json", '{"level":"loud"}', '{"level":1}', "{}", "[]", "null", ""]) {
    const res = await app.request("/log-level", putLevel(body, auth));
    assert.equal(res.status, 400, body);
    assert.equal((await res.json()).error, 'Body must be {"level": one of debug, info, warn, error}');
  }
  assert.equal(logger.level, "info");
});

Deno.test("createApp rejects a body over maxBody with 413 when content-length says so", async () => {
  const { app, logger } = setup({ token: TOKEN, maxBody: 64 });
  const body = JSON.stringify({ level: "debug", pad: "x".repeat(100) });
  const res = await app.request(
    "/log-level",
    putLevel(body, { ...auth, "content-length": String(new TextEncoder().encode(body).length) }),
  );
  assert.equal(res.status, 413);
  assert.deepEqual(await res.json(), { error: "Request body larger than 64 bytes" });
  assert.equal(logger.level, "info");
});

Deno.test("createApp accepts a body of exactly maxBody bytes and rejects one byte more", async () => {
  const { app, logger } = setup({ token: TOKEN, maxBody: 64 });
  const exact = '{"level":"warn"}'.padEnd(64, " ");
  const ok = await app.request("/log-level", putLevel(exact, { ...auth, "content-length": "64" }));
  assert.equal(ok.status, 200);
  assert.equal(logger.level, "warn");
  const over = await app.request("/log-level", putLevel(exact + " ", { ...auth, "content-length": "65" }));
  assert.equal(over.status, 413);
  const streamedOver = await app.request(
    new Request("http://localhost/log-level", { method: "PUT", body: streamOf([exact, " "]), headers: auth }),
  );
  assert.equal(streamedOver.status, 413);
});

Deno.test("createApp rejects a streamed body over maxBody with 413 without content-length", async () => {
  const { app, logger } = setup({ token: TOKEN, maxBody: 64 });
  const chunks = ['{"level":"debug",', `"pad":"${"x".repeat(40)}`, `${"y".repeat(40)}"}`];
  const request = new Request("http://localhost/log-level", {
    method: "PUT",
    body: streamOf(chunks),
    headers: { ...auth, "content-type": "application/json" },
  });
  assert.equal(request.headers.get("content-length"), null);
  const res = await app.request(request);
  assert.equal(res.status, 413);
  assert.deepEqual(await res.json(), { error: "Request body larger than 64 bytes" });
  assert.equal(logger.level, "info");
});

Deno.test("createApp holds every method's body to maxBody, also under a self-guarded prefix whose guard reads it first", async () => {
  const { app } = setup({ token: TOKEN, maxBody: 64, selfGuarded: ["/cluster/"] });
  let read = 0;
  // As the cluster's signature check does: the body is read before any route is matched, for any method.
  app.use("/cluster/*", async (c) => {
    read = (await c.req.arrayBuffer()).byteLength;
    return c.json({ read }, 401);
  });
  for (const method of ["OPTIONS", "PROPFIND", "POST"]) {
    const big = "x".repeat(1000);
    const declared = await app.request("/cluster/usage", {
      method,
      body: big,
      headers: { "content-length": "1000" },
    });
    assert.equal(declared.status, 413, `${method} with content-length`);
    await declared.body?.cancel();
    const streamed = await app.request(
      new Request("http://localhost/cluster/usage", { method, body: streamOf([big, big, big]) }),
    );
    assert.equal(streamed.status, 413, `${method} streamed`);
    await streamed.body?.cancel();
  }
  assert.equal(read, 0, "no body over the limit was read whole");
});

Deno.test("createApp accepts a streamed body within maxBody", async () => {
  const { app, logger } = setup({ token: TOKEN, maxBody: 64 });
  const request = new Request("http://localhost/log-level", {
    method: "PUT",
    body: streamOf(['{"level":', '"warn"}']),
    headers: { ...auth, "content-type": "application/json" },
  });
  const res = await app.request(request);
  assert.equal(res.status, 200);
  assert.equal(logger.level, "warn");
});

Deno.test("createApp guards every mutating method, even on unknown paths", async () => {
  const { app } = setup({ token: null });
  for (const method of ["POST", "PUT", "PATCH", "DELETE"]) {
    const res = await app.request("/no-such-route", { method, body: method === "DELETE" ? undefined : "{}" });
    assert.equal(res.status, 403, method);
  }
  const tokened = setup({ token: TOKEN }).app;
  const unauth = await tokened.request("/no-such-route", { method: "POST", body: "{}" });
  assert.equal(unauth.status, 401);
  const authed = await tokened.request("/no-such-route", { method: "POST", body: "{}", headers: auth });
  assert.equal(authed.status, 404);
});

Deno.test("createApp leaves reads open when a token is configured", async () => {
  const { app } = setup({ token: TOKEN });
  assert.equal((await app.request("/status")).status, 200);
  assert.equal((await app.request("/metrics")).status, 200);
  assert.equal((await app.request("/healthz")).status, 200);
});

Deno.test("createApp answers 500 JSON and logs the error when a dependency throws", async () => {
  const { app, lines } = setup({
    roles: () => {
      throw new Error("relay table gone");
    },
  });
  const res = await app.request("/status");
  assert.equal(res.status, 500);
  assert.deepEqual(await res.json(), { error: "Internal error" });
  assert.match(lines.at(-1) ?? "", /level=error .*msg="request failed" method=GET path=\/status/);
  assert.match(lines.at(-1) ?? "", /relay table gone/);
  const metrics = await (await app.request("/metrics")).text();
  assert.match(metrics, /^edgenode_http_server_errors_total 1$/m);
});

Deno.test("createApp guards /cluster/* with the token when no running role guards it itself", async () => {
  const { app } = setup({ token: TOKEN });
  const unauth = await app.request("/cluster/sessions/x/stop", { method: "POST", body: "{}" });
  assert.equal(unauth.status, 401);
  assert.equal((await setup({ token: null }).app.request("/cluster/x", { method: "POST" })).status, 403);
});

Deno.test("createApp leaves a prefix a running role guards itself to that role's guard", async () => {
  const { app } = setup({
    token: TOKEN,
    selfGuarded: ["/cluster/"],
    mount: [
      (a) => a.use("/cluster/*", (c) => Promise.resolve(c.json({ error: "the cluster's own guard" }, 401))),
    ],
  });
  const res = await app.request("/cluster/sessions/x/stop", { method: "POST", body: "{}" });
  assert.equal(res.status, 401);
  assert.deepEqual(await res.json(), { error: "the cluster's own guard" });
  assert.equal(res.headers.get("www-authenticate"), null, "not the bearer token's answer");
  const other = await app.request("/sessions", { method: "POST", body: "{}" });
  assert.equal(
    other.headers.get("www-authenticate")?.startsWith("Bearer"),
    true,
    "other paths keep the token",
  );
});

Deno.test("createApp refuses a self-guarded prefix that would open every route", () => {
  for (const p of ["", "/", "cluster", "/cluster"]) {
    assert.throws(() => setup({ selfGuarded: [p] }), /Cannot exempt/);
  }
});
