/**
 * Agent role reload (RunningRole.prepareReload): real checks over TCP before and after. A changed listen address
 * moves the agent to a new listener (the old port closes), a changed load source answers from the commit on, the
 * state set over the API survives unless the config changes `state`, and a reload that cannot be done changes
 * nothing.
 */
import assert from "node:assert/strict";
import { agentRole, type AgentSection, startAgent } from "../../lib/agent/role.ts";
import type { LoadReaders } from "../../lib/agent/load.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { StartError } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { freeTcpPort } from "../_support/ports.ts";
import { readToEnd } from "../_support/tcp.ts";

const defaults = agentRole.section.default as AgentSection;

function section(over: Partial<AgentSection> = {}): AgentSection {
  return { ...defaults, listen: { host: "127.0.0.1", port: 0 }, ...over };
}

/** A load average of 1 on 4 CPUs (75% spare); a command replies with its arguments, as echo would. */
const readers: LoadReaders = {
  readText: (path) => Promise.resolve(path === "/proc/loadavg" ? "1.00 0.50 0.25 1/89 3828\n" : null),
  cpuCount: () => 4,
  run: (argv) => Promise.resolve({ stdout: `${argv.slice(1).join(" ")}\n` }),
};

async function start(cfg: AgentSection) {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const logger = new Logger({ level: "error", clock, sink: () => {} });
  const agent = await startAgent(cfg, { nodeName: "n", logger, metrics: new MetricsRegistry(), clock }, {
    readers,
  });
  return {
    agent,
    clock,
    port: () => Number(String(agent.status().listen).split(":").pop()),
    async [Symbol.asyncDispose]() {
      await agent.stop(AbortSignal.abort());
    },
  };
}

async function refused(port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    return false;
  } catch (error) {
    return error instanceof Deno.errors.ConnectionRefused;
  }
}

Deno.test("agent reload moves to a new listen address, and the old port closes", async () => {
  await using a = await start(section());
  const old = a.port();
  assert.equal(await readToEnd(old), "75% ready\n");
  const port = freeTcpPort();
  const r = await a.agent.prepareReload!(section({ listen: { host: "127.0.0.1", port } }));
  assert.deepEqual(r.summary.replaced, ["agent listener"]);
  // Until the commit the old listener answers.
  assert.equal(await readToEnd(old), "75% ready\n");
  await r.commit(AbortSignal.timeout(5000));
  assert.equal(a.agent.status().listen, `127.0.0.1:${port}`);
  assert.equal(await readToEnd(port), "75% ready\n");
  assert.ok(await refused(old), "the old listener is closed");
  // Counters carry on across the new listener.
  assert.equal((a.agent.status().counters as Record<string, number>).replies, 3);
});

Deno.test("agent reload applies a changed source and maxconn in place, and keeps the state set over the API", async () => {
  await using a = await start(section());
  const port = a.port();
  a.agent.setAdmin("drain");
  const r = await a.agent.prepareReload!(
    section({ source: "command", command: ["/bin/echo", "42%"], maxconn: 7 }),
  );
  assert.deepEqual(r.summary.changed, ["agent"]);
  assert.deepEqual(r.summary.replaced, []);
  assert.match(r.summary.notes[0], /agent state drain set over the API stays/);
  assert.equal(await readToEnd(port), "75% drain\n");
  await r.commit(AbortSignal.timeout(5000));
  assert.equal(await readToEnd(port), "42% maxconn:7 drain\n");
  assert.equal(a.agent.status().source, "command");

  // A config that changes `state` wins over the runtime one.
  const again = await a.agent.prepareReload!(
    section({ source: "command", command: ["/bin/echo", "42%"], maxconn: 7, state: "maint" }),
  );
  await again.commit(AbortSignal.timeout(5000));
  assert.equal(a.agent.admin, "maint");
});

Deno.test("agent reload that cannot bind or read its new source throws and changes nothing", async () => {
  await using a = await start(section());
  const port = a.port();
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const busy = (taken.addr as Deno.NetAddr).port;
    await assert.rejects(
      a.agent.prepareReload!(section({ listen: { host: "127.0.0.1", port: busy } })),
      (error: Error) => {
        assert.ok(error instanceof StartError);
        assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${busy}`));
        return true;
      },
    );
    await assert.rejects(
      a.agent.prepareReload!(
        section({ source: "connections", port: 80, listen: { host: "127.0.0.1", port: freeTcpPort() } }),
      ),
      /^StartError: Cannot reload agent: source connections: /,
    );
    // The same port under another address cannot sit beside the running listener.
    await assert.rejects(
      a.agent.prepareReload!(section({ listen: { host: "0.0.0.0", port } })),
      new RegExp(`^StartError: Cannot reload agent: listen 0\\.0\\.0\\.0:${port} takes port ${port}`),
    );
    assert.equal(await readToEnd(port), "75% ready\n");
    assert.equal(a.agent.status().source, "loadavg");
  } finally {
    taken.close();
  }
});

Deno.test("agent reload aborted after prepare closes the new listener and keeps the old", async () => {
  await using a = await start(section());
  const old = a.port();
  const port = freeTcpPort();
  const r = await a.agent.prepareReload!(section({ listen: { host: "127.0.0.1", port } }));
  await r.abort();
  assert.ok(await refused(port));
  assert.equal(await readToEnd(old), "75% ready\n");
});
