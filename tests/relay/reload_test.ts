/**
 * Relay role reload (RunningRole.prepareReload): the role runs on real loopback sockets, datagrams flow while the
 * section changes, and the tests check what a user of the relay would notice: nothing lost through a relay the
 * reload did not touch, a new target served from the next datagram, runtime participants kept, added parts serving,
 * removed ones gone, and a reload that cannot bind changing nothing.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config/load.ts";
import { ErrorList, StartError } from "../../lib/core/errors.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { openUdp, type UdpSocket } from "../../lib/net/udp.ts";
import { JOIN_MIN_BYTES } from "../../lib/relay/participants.ts";
import { relayRole, type RelaySection } from "../../lib/relay/role.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";
import type { RunningRole } from "../../lib/roles/role.ts";
import { Hono } from "hono";
import { freeUdpPort } from "../_support/ports.ts";
import { until } from "../_support/until.ts";
import { collect } from "../net/udp_contract.ts";

const roles = builtinRoles();
const enc = new TextEncoder();
const dec = new TextDecoder();

function section(yaml: string): RelaySection {
  return loadConfig(yaml, { file: "r.yaml", roles }).sections.relay as RelaySection;
}

/** A running relay role with a log kept for the test. */
async function startRole(yaml: string): Promise<{ role: RunningRole; lines: string[]; app: Hono }> {
  const clock = new ManualClock(Date.now());
  const lines: string[] = [];
  const role = await relayRole.start(section(yaml), {
    nodeName: "n",
    logger: new Logger({ level: "debug", clock, sink: (l) => lines.push(l) }),
    metrics: new MetricsRegistry(),
    clock,
  });
  const app = new Hono();
  role.routes!(app);
  return { role, lines, app };
}

async function reload(role: RunningRole, yaml: string) {
  const r = await role.prepareReload!(section(yaml));
  await r.commit(AbortSignal.timeout(5000));
  return r.summary;
}

/** A socket that keeps every datagram it receives (as text) until closed. */
class Sink {
  readonly got: string[] = [];
  readonly done: Promise<void>;
  constructor(readonly socket: UdpSocket) {
    this.done = (async () => {
      for (;;) {
        const batch = await socket.receive();
        if (!batch) return;
        for (let i = 0; i < batch.count; i++) this.got.push(dec.decode(batch.data(i)));
      }
    })();
  }
  static open(): Sink {
    return new Sink(openUdp({ host: "127.0.0.1", port: 0 }));
  }
  get addr(): string {
    return `127.0.0.1:${this.socket.local.port}`;
  }
  async close(): Promise<void> {
    await this.socket.close();
    await this.done;
  }
}

/** Sends numbered datagrams ("tag:N") to a port, one per turn of the event loop, until stopped. */
class Stream {
  sent = 0;
  #stop = false;
  readonly #done: Promise<void>;
  readonly #socket = openUdp({ host: "127.0.0.1", port: 0 });
  constructor(readonly tag: string, port: number) {
    const to = this.#socket.destinations([{ host: "127.0.0.1", port }]);
    this.#done = (async () => {
      while (!this.#stop) {
        this.#socket.send([enc.encode(`${this.tag}:${this.sent}`)], to);
        this.sent++;
        await new Promise((r) => setTimeout(r, 1));
      }
    })();
  }
  /** Stops sending; returns how many were sent. */
  async stop(): Promise<number> {
    this.#stop = true;
    await this.#done;
    await this.#socket.close();
    return this.sent;
  }
}

function numbers(got: readonly string[], tag: string): number[] {
  return got.filter((g) => g.startsWith(`${tag}:`)).map((g) => Number(g.slice(tag.length + 1)));
}

function relayStatus(role: RunningRole) {
  return role.status() as {
    relays: Record<string, { listen: string; targets: { target: string; sent: number }[] }>;
    reflectors: Record<
      string,
      { participants: { address: string; origin: string }[]; participants_count?: number }
    >;
  };
}

function canBind(port: number): boolean {
  try {
    openUdp({ host: "127.0.0.1", port }).close();
    return true;
  } catch {
    return false;
  }
}

function noErrors(lines: string[]): void {
  assert.deepEqual(lines.filter((l) => l.includes("level=error")), []);
}

for (const mode of ["thread", "portable"] as const) {
  const udp = mode === "portable" ? "  udp: portable\n" : "";

  Deno.test(`relay reload (${mode}) keeps an unchanged relay relaying with no datagram lost, starts an added relay and stops a removed one`, async () => {
    const [keep, gone, added] = [Sink.open(), Sink.open(), Sink.open()];
    const [pKeep, pGone, pAdded] = [freeUdpPort(), freeUdpPort(), freeUdpPort()];
    const { role, lines } = await startRole(
      `relay:\n${udp}  relays:\n` +
        `    - {name: keep, listen: 127.0.0.1:${pKeep}, targets: [${keep.addr}]}\n` +
        `    - {name: gone, listen: 127.0.0.1:${pGone}, targets: [${gone.addr}]}\n`,
    );
    const stream = new Stream("k", pKeep);
    try {
      await until("datagrams through relay keep", () => keep.got.length > 20);
      const threaded = (relayStatus(role).relays.keep as unknown as { thread: boolean }).thread;
      assert.equal(threaded, mode === "thread", "the relay runs where this test means it to");
      const summary = await reload(
        role,
        `relay:\n${udp}  relays:\n` +
          `    - {name: keep, listen: 127.0.0.1:${pKeep}, targets: [${keep.addr}]}\n` +
          `    - {name: added, listen: 127.0.0.1:${pAdded}, targets: [${added.addr}]}\n`,
      );
      assert.deepEqual(summary.added, ["relay added"]);
      assert.deepEqual(summary.removed, ["relay gone"]);
      assert.deepEqual(summary.changed, []);
      assert.deepEqual(summary.replaced, []);
      const before = stream.sent;
      await until("more datagrams after the reload", () => numbers(keep.got, "k").length > before + 20);
      const sent = await stream.stop();
      await until("every datagram through relay keep", () => keep.got.length >= sent, 5000);
      assert.deepEqual(numbers(keep.got, "k"), Array.from({ length: sent }, (_, i) => i));

      // The added relay serves; the removed one's port is free again and gone from status.
      const probe = new Stream("a", pAdded);
      await until("datagrams through the added relay", () => added.got.length > 3);
      await probe.stop();
      assert.ok(canBind(pGone), "the removed relay's port is free");
      const status = relayStatus(role);
      assert.deepEqual(Object.keys(status.relays).sort(), ["added", "keep"]);
      assert.equal(status.relays.keep.targets[0].sent, sent);
      assert.equal(role.health!().ok, true);
    } finally {
      await stream.stop();
      await role.stop(AbortSignal.abort());
      for (const s of [keep, gone, added]) await s.close();
    }
    noErrors(lines);
  });

  Deno.test(`relay reload (${mode}) applies a changed target list in place from the next datagram`, async () => {
    const [a, b] = [Sink.open(), Sink.open()];
    const port = freeUdpPort();
    const { role, lines } = await startRole(
      `relay:\n${udp}  relays:\n    - {name: r, listen: 127.0.0.1:${port}, targets: [${a.addr}]}\n`,
    );
    const stream = new Stream("s", port);
    try {
      await until("datagrams to a", () => a.got.length > 20);
      const summary = await reload(
        role,
        `relay:\n${udp}  relays:\n    - {name: r, listen: 127.0.0.1:${port}, targets: [${a.addr}, ${b.addr}]}\n`,
      );
      const firstAfter = stream.sent;
      assert.deepEqual(summary.changed, ["relay r"]);
      assert.deepEqual(summary.replaced, []);
      await until("datagrams to b", () => b.got.length > 20);
      const sent = await stream.stop();
      await until(
        "every datagram to a and b",
        () => a.got.length >= sent && numbers(b.got, "s").at(-1) === sent - 1,
      );
      // The kept target lost nothing; the new one got everything sent after the commit, with no gap.
      assert.deepEqual(numbers(a.got, "s"), Array.from({ length: sent }, (_, i) => i));
      const toB = numbers(b.got, "s");
      assert.ok(toB[0] <= firstAfter, `b's first datagram ${toB[0]} came after the commit's ${firstAfter}`);
      assert.deepEqual(toB, Array.from({ length: sent - toB[0] }, (_, i) => toB[0] + i));
      // Counters by target: a's carried over the change, b's from its start.
      const targets = relayStatus(role).relays.r.targets;
      assert.deepEqual(targets.map((t) => [t.target, t.sent]), [[a.addr, sent], [b.addr, toB.length]]);

      // Dropping a target stops it at once: nothing more reaches a after the next reload.
      await reload(
        role,
        `relay:\n${udp}  relays:\n    - {name: r, listen: 127.0.0.1:${port}, targets: [${b.addr}]}\n`,
      );
      const aHad = a.got.length;
      const again = new Stream("t", port);
      await until("datagrams to b after a left", () => numbers(b.got, "t").length > 5);
      await again.stop();
      assert.equal(a.got.length, aHad);
    } finally {
      await stream.stop();
      await role.stop(AbortSignal.abort());
      await a.close();
      await b.close();
    }
    noErrors(lines);
  });
}

Deno.test("relay reload keeps a reflector's joined and API participants, and applies its config participants by item", async () => {
  const [c1, c2, api] = [Sink.open(), Sink.open(), Sink.open()];
  const joiner = openUdp({ host: "127.0.0.1", port: 0 });
  let member: Sink | null = null;
  const [data, reg] = [freeUdpPort(), freeUdpPort()];
  const reflector = (participants: string, limits: string) =>
    `relay:\n  reflectors:\n    - {name: lec, data: 127.0.0.1:${data}, registration: 127.0.0.1:${reg}, ` +
    `allow: [loopback], participants: [${participants}], ${limits}}\n`;
  const { role, lines, app } = await startRole(reflector(c1.addr, "max_participants: 10, timeout: 30s"));
  try {
    // A participant added over the API, and one that joins by the protocol.
    const post = await app.request("/relay/reflectors/lec/participants", {
      method: "POST",
      body: JSON.stringify({ address: api.addr }),
    });
    assert.equal(post.status, 201);
    const to = joiner.destinations([{ host: "127.0.0.1", port: reg }]);
    joiner.send([enc.encode("EDGENODE-JOIN".padEnd(JOIN_MIN_BYTES))], to);
    const [challenge] = await collect(joiner, 1);
    const nonce = dec.decode(challenge.data).split(" ")[1];
    joiner.send([enc.encode(`EDGENODE-CONFIRM ${nonce}`)], to);
    assert.match(dec.decode((await collect(joiner, 1))[0].data), /^EDGENODE-WELCOME 30$/);
    member = new Sink(joiner);

    const summary = await reload(role, reflector(c2.addr, "max_participants: 5, timeout: 60s"));
    assert.deepEqual(summary.changed, ["reflector lec"]);
    assert.deepEqual(summary.replaced, []);
    const listed = relayStatus(role).reflectors.lec.participants.map((p) => `${p.address} ${p.origin}`)
      .sort();
    assert.deepEqual(listed, [`${api.addr} api`, `${c2.addr} config`, `${member.addr} join`].sort());

    // The stream reaches everyone listed, and no longer the participant the config dropped.
    const stream = new Stream("m", data);
    const m = member;
    await until("the stream at every participant", () => [c2, api, m].every((s) => s.got.length > 5));
    await stream.stop();
    assert.equal(c1.got.length, 0);
    // The new timeout is in force: a keepalive is welcomed with it.
    joiner.send([enc.encode(`EDGENODE-CONFIRM ${nonce}`)], to);
    await until("a welcome with the new timeout", () => m.got.includes("EDGENODE-WELCOME 60"));
    assert.equal(role.health!().ok, true);
  } finally {
    await role.stop(AbortSignal.abort());
    for (const s of [c1, c2, api]) await s.close();
    await (member ?? joiner).close();
  }
  noErrors(lines);
});

Deno.test("relay reload that cannot bind throws naming the address, releases what it bound and changes nothing", async () => {
  const [a, b] = [Sink.open(), Sink.open()];
  const [port, free] = [freeUdpPort(), freeUdpPort()];
  const taken = openUdp({ host: "127.0.0.1", port: 0 });
  const busy = taken.local.port;
  const { role, lines } = await startRole(
    `relay:\n  relays:\n    - {name: r, listen: 127.0.0.1:${port}, targets: [${a.addr}]}\n`,
  );
  const stream = new Stream("s", port);
  try {
    await until("datagrams to a", () => a.got.length > 10);
    await assert.rejects(
      role.prepareReload!(section(
        `relay:\n  relays:\n    - {name: r, listen: 127.0.0.1:${port}, targets: [${b.addr}]}\n` +
          `    - {name: fine, listen: 127.0.0.1:${free}, targets: [${b.addr}]}\n` +
          `    - {name: busy, listen: 127.0.0.1:${busy}, targets: [${b.addr}]}\n`,
      )),
      (error: Error) => {
        assert.ok(error instanceof StartError);
        assert.match(
          error.message,
          new RegExp(
            `^Cannot reload relay busy: cannot bind relay "busy" on 127\\.0\\.0\\.1:${busy}: .*address already in use`,
          ),
        );
        // Its key, which the appliance turns into the config's file:line:col.
        assert.equal(error.configPath, "relay.relays[2].listen");
        return true;
      },
    );
    assert.ok(canBind(free), "the socket bound for relay fine was released");
    const sent = await stream.stop();
    await until("every datagram to a", () => a.got.length >= sent);
    assert.deepEqual(numbers(a.got, "s"), Array.from({ length: sent }, (_, i) => i));
    assert.equal(b.got.length, 0);
    assert.deepEqual(Object.keys(relayStatus(role).relays), ["r"]);
  } finally {
    await stream.stop();
    await taken.close();
    await role.stop(AbortSignal.abort());
    await a.close();
    await b.close();
  }
  noErrors(lines);
});

Deno.test("relay reload aborted after prepare releases its sockets and leaves the role as it was", async () => {
  const a = Sink.open();
  const [port, added] = [freeUdpPort(), freeUdpPort()];
  const { role, lines } = await startRole(
    `relay:\n  relays:\n    - {name: r, listen: 127.0.0.1:${port}, targets: [${a.addr}]}\n`,
  );
  try {
    const r = await role.prepareReload!(section(
      `relay:\n  relays:\n    - {name: n, listen: 127.0.0.1:${added}, targets: [${a.addr}]}\n`,
    ));
    assert.deepEqual(r.summary.added, ["relay n"]);
    assert.deepEqual(r.summary.removed, ["relay r"]);
    assert.ok(!canBind(added), "prepare holds the added relay's port");
    await r.abort();
    assert.ok(canBind(added), "abort released it");
    const stream = new Stream("s", port);
    await until("datagrams still through relay r", () => a.got.length > 5);
    await stream.stop();
    assert.deepEqual(Object.keys(relayStatus(role).relays), ["r"]);
  } finally {
    await role.stop(AbortSignal.abort());
    await a.close();
  }
  noErrors(lines);
});

Deno.test("relay reload replaces a relay that moves, and rebinds at commit one whose thread's allow-list changes", async () => {
  const [a, b] = [Sink.open(), Sink.open()];
  const [p1, p2, p3] = [freeUdpPort(), freeUdpPort(), freeUdpPort()];
  const { role, lines } = await startRole(
    `relay:\n  relays:\n` +
      `    - {name: moves, listen: 127.0.0.1:${p1}, targets: [${a.addr}]}\n` +
      `    - {name: stays, listen: 127.0.0.1:${p3}, targets: [${b.addr}]}\n`,
  );
  try {
    const threaded = (relayStatus(role).relays.stays as unknown as { thread: boolean }).thread;
    const summary = await reload(
      role,
      `relay:\n  relays:\n` +
        `    - {name: moves, listen: 127.0.0.1:${p2}, targets: [${a.addr}]}\n` +
        `    - {name: stays, listen: 127.0.0.1:${p3}, targets: [${b.addr}], allow_sources: [127.0.0.0/8]}\n`,
    );
    assert.deepEqual(summary.replaced, threaded ? ["relay moves", "relay stays"] : ["relay moves"]);
    assert.deepEqual(summary.changed, threaded ? [] : ["relay stays"]);
    assert.ok(canBind(p1), "the old address is free");
    for (const [port, sink, tag] of [[p2, a, "x"], [p3, b, "y"]] as const) {
      const s = new Stream(tag, port);
      await until(`datagrams through ${port}`, () => numbers(sink.got, tag).length > 5);
      await s.stop();
    }
    const status = relayStatus(role).relays as unknown as Record<
      string,
      { listen: string; allow_sources: unknown }
    >;
    assert.equal(status.moves.listen, `127.0.0.1:${p2}`);
    assert.deepEqual(status.stays.allow_sources, ["127.0.0.0/8"]);
  } finally {
    await role.stop(AbortSignal.abort());
    await a.close();
    await b.close();
  }
  noErrors(lines);
});

Deno.test("relay reload refuses a port a stopping part holds under another address, and changes nothing", async () => {
  const a = Sink.open();
  const port = freeUdpPort("0.0.0.0");
  const { role, lines } = await startRole(
    `relay:\n  relays:\n    - {name: r, listen: 0.0.0.0:${port}, targets: [${a.addr}]}\n`,
  );
  try {
    await assert.rejects(
      role.prepareReload!(section(
        `relay:\n  relays:\n    - {name: r, listen: 127.0.0.1:${port}, targets: [${a.addr}]}\n`,
      )),
      new RegExp(
        `^StartError: Cannot reload relay r: relay "r" on 127\\.0\\.0\\.1:${port} clashes with 0\\.0\\.0\\.0:${port}, which relay r holds`,
      ),
    );
    const s = new Stream("s", port);
    await until("datagrams still through relay r", () => a.got.length > 5);
    await s.stop();
  } finally {
    await role.stop(AbortSignal.abort());
    await a.close();
  }
  noErrors(lines);
});

Deno.test("relay reload replacing a reflector on its registration address hands its participants over", async () => {
  const api = Sink.open();
  const joiner = openUdp({ host: "127.0.0.1", port: 0 });
  let member: Sink | null = null;
  const [d1, d2, reg] = [freeUdpPort(), freeUdpPort(), freeUdpPort()];
  const reflector = (data: number) =>
    `relay:\n  reflectors:\n    - {name: lec, data: 127.0.0.1:${data}, registration: 127.0.0.1:${reg}, allow: [loopback]}\n`;
  const { role, lines, app } = await startRole(reflector(d1));
  try {
    const post = await app.request("/relay/reflectors/lec/participants", {
      method: "POST",
      body: JSON.stringify({ address: api.addr }),
    });
    assert.equal(post.status, 201);
    const to = joiner.destinations([{ host: "127.0.0.1", port: reg }]);
    joiner.send([enc.encode("EDGENODE-JOIN".padEnd(JOIN_MIN_BYTES))], to);
    const nonce = dec.decode((await collect(joiner, 1))[0].data).split(" ")[1];
    joiner.send([enc.encode(`EDGENODE-CONFIRM ${nonce}`)], to);
    await collect(joiner, 1);
    member = new Sink(joiner);

    const summary = await reload(role, reflector(d2));
    assert.deepEqual(summary.replaced, ["reflector lec"]);
    assert.ok(summary.notes.some((n) => /taken over by the new one/.test(n)), summary.notes.join("; "));
    const listed = relayStatus(role).reflectors.lec.participants.map((p) => `${p.address} ${p.origin}`)
      .sort();
    assert.deepEqual(listed, [`${api.addr} api`, `${member.addr} join`].sort());
    assert.ok(canBind(d1), "the old data port is free");

    const m = member;
    const stream = new Stream("m", d2);
    await until(
      "the stream at both participants",
      () => [api, m].every((s) => numbers(s.got, "m").length > 5),
    );
    await stream.stop();
    // The joined participant's nonce is still good: its keepalive is welcomed by the new reflector.
    joiner.send([enc.encode(`EDGENODE-CONFIRM ${nonce}`)], to);
    await until("a welcome from the new reflector", () => m.got.includes("EDGENODE-WELCOME 30"));
  } finally {
    await role.stop(AbortSignal.abort());
    await api.close();
    await (member ?? joiner).close();
  }
  noErrors(lines);
});

Deno.test("a relay config with an IPv6 target on an IPv4 listen address is refused at its place", () => {
  const text = `roles: [relay]
relay:
  relays:
    - {name: r, listen: "127.0.0.1:5000", targets: ["127.0.0.1:5001", "[::1]:5002"]}
`;
  assert.throws(
    () => loadConfig(text, { file: "c.yaml", roles: builtinRoles() }),
    (error: unknown) =>
      error instanceof ErrorList && error.errors.length === 1 &&
      /^c\.yaml:4:71: relay\.relays\[0\]\.targets\[1\]: Target \[::1\]:5002 is IPv6, but the relay listens on 127\.0\.0\.1:5000 \(IPv4\)/
        .test(error.errors[0].format()),
  );
});
