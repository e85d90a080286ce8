/**
 * One server's state machine: health checks take it down after `fall` failures and back after `rise` successes, agent
 * replies change its weight and state the way HAProxy applies them, the operator's drain / maint / ready combine with
 * the agent's (the stricter wins), and its signal aborts exactly when its open connections must close.
 */
import assert from "node:assert/strict";
import { parseAgentReply } from "../../lib/net/agent_check.ts";
import type { AdminState, ServerSpec } from "../../lib/scheduler/config.ts";
import { Server } from "../../lib/scheduler/server.ts";

const T0 = Date.UTC(2026, 0, 1);

function server(spec: Partial<ServerSpec> = {}, rise = 2, fall = 3): Server {
  const full: ServerSpec = {
    address: { host: "127.0.0.1", low: 8080, high: 8080 },
    weight: 10,
    agent: { host: "127.0.0.1", port: 9999 },
    maxconn: 0,
    state: "ready" as AdminState,
    ...spec,
  };
  return new Server(
    { addr: { host: "127.0.0.1", port: 8080 }, key: "127.0.0.1:8080", spec: full },
    rise,
    fall,
    T0,
  );
}

/** Applies an agent reply line as the monitor does. */
function agent(s: Server, line: string, at = T0) {
  return s.agentReport(parseAgentReply(line), line, null, at);
}

/**
 * Counts how many times `s` told its connections to close. The server hands out a fresh signal right after aborting
 * the old one, so each read of `count` looks at the signal it handed out last and moves on to the new one.
 */
function closes(s: Server): { readonly count: number } {
  let count = 0;
  let signal = s.signal;
  return {
    get count() {
      if (signal.aborted) {
        count++;
        signal = s.signal;
      }
      return count;
    },
  };
}

Deno.test("Server goes down after `fall` failed checks in a row, not before, and closes its connections", () => {
  const s = server({}, 2, 3);
  const closed = closes(s);
  assert.equal(s.state, "up");
  assert.equal(s.observe(false, "refused", T0 + 1), null);
  assert.equal(s.observe(false, "refused", T0 + 2), null);
  assert.equal(s.state, "up");
  assert.equal(closed.count, 0);
  assert.equal(s.observe(false, "refused", T0 + 3), "down");
  assert.equal(s.state, "down");
  assert.equal(s.available, false);
  assert.equal(s.weight, 0);
  assert.equal(closed.count, 1, "the open connections are told to close");
  assert.equal(s.changedAt, T0 + 3);
  assert.equal(s.observe(false, "refused", T0 + 4), null, "already down: no second transition");
  assert.equal(closed.count, 1);
});

Deno.test("Server comes back after `rise` good checks in a row (auto re-enable)", () => {
  const s = server({}, 2, 1);
  assert.equal(s.observe(false, "refused", T0), "down");
  assert.equal(s.observe(true, "ok", T0 + 1), null);
  assert.equal(s.state, "down");
  assert.equal(s.observe(false, "refused", T0 + 2), null, "a failure restarts the count");
  assert.equal(s.observe(true, "ok", T0 + 3), null);
  assert.equal(s.observe(true, "ok", T0 + 4), "up");
  assert.equal(s.state, "up");
  assert.equal(s.weight, 10);
  assert.deepEqual(s.lastCheck, { at: T0 + 4, ok: true, detail: "ok" });
});

Deno.test("Server forgets failures after a good check: only failures in a row count", () => {
  const s = server({}, 2, 3);
  s.observe(false, "x", T0);
  s.observe(false, "x", T0);
  s.observe(true, "ok", T0);
  s.observe(false, "x", T0);
  s.observe(false, "x", T0);
  assert.equal(s.state, "up");
  assert.equal(s.observe(false, "x", T0), "down");
});

Deno.test("Server counts a failed client connect as a failed check", () => {
  const s = server({}, 2, 2);
  assert.equal(s.connectFailed("Cannot connect: connection refused", T0), null);
  assert.equal(s.failedConnects, 1);
  assert.match(s.lastCheck!.detail, /^client connect failed: Cannot connect: connection refused$/);
  assert.equal(s.connectFailed("refused", T0), "down");
  assert.equal(s.failedConnects, 2);
});

Deno.test("Server caps an agent-scaled weight at 256 as HAProxy does, and keeps it while draining", () => {
  const s = server({ weight: 10 });
  agent(s, "30000%");
  assert.equal(s.weight, 256, "10 x 25600% stops at 256");
  agent(s, "50% drain");
  assert.equal(s.weight, 0, "a draining server takes no new clients");
  assert.equal(s.scaledWeight, 5);
  assert.equal(s.status().scaled_weight, 5, "shown as HAProxy shows a draining server's weight");
});

Deno.test("Server applies an agent's percentage to its configured weight: 50% halves it", () => {
  const s = server({ weight: 10 });
  assert.equal(agent(s, "50%"), null);
  assert.equal(s.weight, 5);
  assert.equal(s.capacity, 50);
  assert.equal(s.status().load_percent, 50);
  assert.equal(s.status().effective_weight, 5);
  assert.equal(s.status().weight, 10, "the configured weight is unchanged");
  agent(s, "100%");
  assert.equal(s.weight, 10);
  agent(s, "0%");
  assert.equal(s.weight, 0);
  assert.equal(s.available, false, "0% takes the server out of the rotation");
  assert.equal(s.state, "up", "but it is neither down nor drained");
});

Deno.test("Server on agent drain takes no new connections and keeps the open ones; ready restores it", () => {
  const s = server();
  const closed = closes(s);
  assert.equal(agent(s, "drain"), null);
  assert.equal(s.state, "drain");
  assert.equal(s.available, false);
  assert.equal(closed.count, 0, "draining does not close connections");
  agent(s, "ready");
  assert.equal(s.state, "up");
  assert.equal(s.available, true);
});

Deno.test("Server on agent maint closes its connections once, and ready ends it", () => {
  const s = server();
  const closed = closes(s);
  agent(s, "maint");
  assert.equal(s.state, "maint");
  assert.equal(s.available, false);
  assert.equal(closed.count, 1);
  agent(s, "maint");
  assert.equal(closed.count, 1, "a repeated maint closes nothing more");
  agent(s, "ready");
  assert.equal(s.state, "up");
  assert.equal(closed.count, 1);
});

Deno.test("Server on agent down is marked down (closing connections) and up restores it", () => {
  const s = server();
  const closed = closes(s);
  assert.equal(agent(s, "down #disk full", T0 + 5), "down");
  assert.equal(s.state, "down");
  assert.equal(closed.count, 1);
  assert.equal(s.changedAt, T0 + 5);
  assert.equal(agent(s, "up", T0 + 6), "up");
  assert.equal(s.state, "up");
  for (const word of ["fail", "stopped"]) {
    assert.equal(agent(s, word), "down", word);
    assert.equal(agent(s, "up"), "up");
  }
});

Deno.test("Server agent up does not override failing health checks", () => {
  const s = server({}, 2, 1);
  s.observe(false, "refused", T0);
  assert.equal(agent(s, "up"), null);
  assert.equal(s.state, "down");
});

Deno.test("Server agent maxconn:1 limits the server to one connection", () => {
  const s = server({ maxconn: 0 });
  assert.equal(s.hasRoom, true);
  agent(s, "maxconn:1");
  assert.equal(s.maxconn, 1);
  s.active = 1;
  assert.equal(s.hasRoom, false);
  s.active = 0;
  assert.equal(s.hasRoom, true);
  agent(s, "maxconn:0");
  s.active = 1000;
  assert.equal(s.hasRoom, true, "maxconn:0 means no limit");
});

Deno.test("Server ignores garbage from an agent and keeps what it knew", () => {
  const s = server({ weight: 10 });
  agent(s, "50% maxconn:4");
  for (
    const garbage of ["hello", "12x%", "maxconn:abc", "%", "-5%", "50 %", "down#busy", "\u00e9t\u00e9", ""]
  ) {
    assert.equal(agent(s, garbage), null, garbage);
    assert.equal(s.weight, 5, garbage);
    assert.equal(s.maxconn, 4, garbage);
    assert.equal(s.state, "up", garbage);
  }
  agent(s, "hello 25% world");
  assert.equal(s.weight, 2.5, "the readable words of a partly bad line count, as in HAProxy");
  assert.deepEqual(s.lastAgent?.problems, ['Ignored unknown word "hello"', 'Ignored unknown word "world"']);
});

Deno.test("Server unchanged when its agent cannot be reached", () => {
  const s = server({ weight: 10 });
  agent(s, "40% drain");
  const closed = closes(s);
  assert.equal(s.agentReport(null, null, "127.0.0.1:9999: connection refused", T0 + 9), null);
  assert.equal(s.state, "drain");
  assert.equal(s.weight, 0);
  assert.equal(s.agentPercent, 40);
  assert.equal(closed.count, 0);
  assert.deepEqual(s.lastAgent, {
    at: T0 + 9,
    ok: false,
    detail: "127.0.0.1:9999: connection refused",
    reply: null,
    problems: [],
  });
});

Deno.test("Server takes the stricter of the operator's and the agent's administrative state", () => {
  const s = server();
  s.setAdmin("drain");
  agent(s, "ready");
  assert.equal(s.state, "drain", "agent ready does not undo the operator's drain");
  s.setAdmin("ready");
  assert.equal(s.state, "up");
  agent(s, "maint");
  s.setAdmin("drain");
  assert.equal(s.state, "maint", "the operator's drain does not undo the agent's maint");
  assert.equal(s.admin, "drain");
  assert.equal(s.agentAdmin, "maint");
});

Deno.test("Server setAdmin: maint closes open connections, drain keeps them, both stop new ones", () => {
  const s = server();
  const closed = closes(s);
  s.setAdmin("drain");
  assert.equal(closed.count, 0);
  assert.equal(s.available, false);
  s.setAdmin("maint");
  assert.equal(closed.count, 1);
  assert.equal(s.available, false);
  s.setAdmin("maint");
  assert.equal(closed.count, 1);
  s.setAdmin("ready");
  assert.equal(s.available, true);
  assert.equal(s.signal.aborted, false, "a fresh signal for the connections made from now on");
});

Deno.test("Server starts in the state and weight its config gives", () => {
  const s = server({ state: "drain", weight: 3, maxconn: 7 });
  assert.equal(s.state, "drain");
  assert.equal(s.configuredWeight, 3);
  assert.equal(s.maxconn, 7);
  const status = s.status();
  assert.equal(status.server, "127.0.0.1:8080");
  assert.equal(status.state, "drain");
  assert.equal(status.admin, "drain");
  assert.equal(status.weight, 3);
  assert.equal(status.effective_weight, 0);
  assert.ok(Number.isNaN(status.load_percent), "no report yet (null in the JSON)");
  assert.equal(status.changed_at, new Date(T0).toISOString());
});
