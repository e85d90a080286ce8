/**
 * The takeover's conversation in one process (lib/takeover/): a control server over one registry, a taking side over
 * another, real descriptors between them. And what each side says when the other is not what it expects.
 */
import assert from "node:assert/strict";
import { systemClock } from "../../lib/core/clock.ts";
import { StartError } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { connectControl } from "../../lib/net/fd_channel.ts";
import { SocketRegistry } from "../../lib/net/handover.ts";
import { sharedLibc } from "../../lib/net/libc.ts";
import { openFastUdp } from "../../lib/net/udp_fast.ts";
import { Takeover } from "../../lib/takeover/client.ts";
import { ControlServer } from "../../lib/takeover/control.ts";
import { message, parseMessage, PROTOCOL_VERSION } from "../../lib/takeover/protocol.ts";
import { until } from "../_support/until.ts";

function quietLogger(lines: string[]): Logger {
  return new Logger({ level: "debug", clock: systemClock, sink: (line: string) => void lines.push(line) });
}

async function tempPath(): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "edgenode-control-" });
  return { path: `${dir}/control.sock`, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

Deno.test("parseMessage names both versions when the peer speaks another, and refuses a bad field", () => {
  assert.throws(
    () => parseMessage({ v: 2, type: "takeover", pid: 1 }, ["takeover"]),
    /speaks takeover protocol version 2; this process speaks 1/,
  );
  assert.throws(
    () => parseMessage({ v: PROTOCOL_VERSION, type: "ready" }, ["sockets"]),
    /Unexpected .*"ready"/,
  );
  assert.throws(
    () =>
      parseMessage({ v: 1, type: "sockets", sockets: [{ kind: "sctp", addr: {} }], last: true }, ["sockets"]),
    /bad field "sockets"/,
  );
  assert.deepEqual(parseMessage(message({ type: "ready" }), ["ready"]), { v: 1, type: "ready" });
});

Deno.test("a takeover hands a UDP socket over, lists what cannot be passed, and the old side hands over on ready", async () => {
  await using tmp = await tempPath();
  const oldLines: string[] = [];
  const newLines: string[] = [];
  const oldSockets = new SocketRegistry();
  const socket = openFastUdp({ host: "127.0.0.1", port: 0 }, {}, false)!;
  oldSockets.hold("udp", socket.local, socket.descriptor.fd);
  const unused = openFastUdp({ host: "127.0.0.1", port: 0 }, {}, false)!;
  oldSockets.hold("udp", unused.local, unused.descriptor.fd);
  oldSockets.hold("udp", { host: "127.0.0.1", port: socket.local.port + 1 }, null, "kept by Deno");
  let handedTo = 0;
  const server = ControlServer.open(tmp.path, {
    registry: oldSockets,
    logger: quietLogger(oldLines),
    drainTimeoutMs: 1234,
    handOver: (pid) => handedTo = pid,
  });
  server.serve();
  try {
    const newSockets = new SocketRegistry();
    const takeover = await Takeover.begin(tmp.path, { registry: newSockets, logger: quietLogger(newLines) });
    assert.equal(takeover.received, 2);
    assert.equal(takeover.pid, Deno.pid);
    assert.deepEqual(takeover.unpassable.map((u) => u.reason), ["kept by Deno"]);
    const fd = newSockets.take("udp", socket.local);
    assert.ok(fd !== null && fd !== socket.descriptor.fd);
    await takeover.commit();
    assert.equal(handedTo, Deno.pid);
    // The socket this side's config did not ask for is closed here and listed; the old side's copy stays open.
    assert.ok(
      newLines.some((l) => /passed socket not in this config; closed.*addr=127\.0\.0\.1:(\d+)/.test(l)),
      newLines.join("\n"),
    );
    assert.deepEqual(newSockets.unclaimed(), []);
    assert.ok(
      newLines.some((l) => /the running process drains.*drain_timeout_ms=1234/.test(l)),
      newLines.join("\n"),
    );
    assert.ok(oldLines.some((l) => /cannot pass socket.*kept by Deno/.test(l)), oldLines.join("\n"));
    // The old side removed its socket file before answering: the path is free for the new process.
    await assert.rejects(Deno.lstat(tmp.path), Deno.errors.NotFound);
    const { closeFd } = await import("../../lib/net/fd_channel.ts");
    closeFd(fd!);
  } finally {
    await server.close();
    await socket.close();
    await unused.close();
  }
});

Deno.test("an aborted takeover leaves the old side serving and answering the next one", async () => {
  await using tmp = await tempPath();
  const lines: string[] = [];
  let handed = false;
  const server = serveOld(tmp.path, lines, () => handed = true);
  try {
    const first = await Takeover.begin(tmp.path, { registry: new SocketRegistry(), logger: quietLogger([]) });
    await first.abort("Cannot listen on udp 127.0.0.1:9: address already in use");
    // One conversation at a time: the next is answered once the old side has read the abort.
    await until("the abort read", () => lines.some((l) => /takeover aborted/.test(l)));
    const second = await Takeover.begin(tmp.path, {
      registry: new SocketRegistry(),
      logger: quietLogger([]),
    });
    assert.ok(
      lines.some((l) => /takeover aborted by the new process; still serving/.test(l)),
      lines.join("\n"),
    );
    assert.equal(handed, false);
    await second.commit();
    assert.equal(handed, true);
  } finally {
    await server.close();
  }
});

Deno.test("the old side refuses a peer of another protocol version, saying both", async () => {
  await using tmp = await tempPath();
  const server = serveOld(tmp.path, [], () => {});
  try {
    const ch = connectControl(tmp.path);
    await ch.send({ v: 2, type: "takeover", pid: 1 });
    const answer = (await ch.receive(5_000)).message as { type: string; reason: string };
    assert.equal(answer.type, "refused");
    assert.match(answer.reason, /version 2; this process speaks 1/);
    ch.close();
  } finally {
    await server.close();
  }
});

Deno.test("Takeover.begin says why when nothing runs at the path", async () => {
  await using tmp = await tempPath();
  await assert.rejects(
    Takeover.begin(tmp.path, { registry: new SocketRegistry(), logger: quietLogger([]) }),
    (e: unknown) => e instanceof StartError && /Cannot take over from ".*": no such socket/.test(e.message),
  );
});

/** How many descriptors this process has open (fcntl F_GETFD answers for each; /proc needs --allow-all). */
function openFds(): number {
  const c = sharedLibc()!.symbols;
  let n = 0;
  for (let fd = 0; fd < 4096; fd++) if (c.fcntl(fd, 1, /* F_GETFD */ 0) >= 0) n++;
  return n;
}

Deno.test("the old side closes descriptors a peer attaches to its takeover frame", async () => {
  await using tmp = await tempPath();
  const lines: string[] = [];
  const server = serveOld(tmp.path, lines, () => {});
  const extra = Array.from({ length: 20 }, () => openFastUdp({ host: "127.0.0.1", port: 0 }, {}, false)!);
  try {
    const before = openFds();
    const ch = connectControl(tmp.path);
    await ch.send(message({ type: "takeover", pid: Deno.pid }), extra.map((u) => u.descriptor.fd));
    const answer = (await ch.receive(5_000)).message as { type: string; reason: string };
    assert.equal(answer.type, "refused");
    assert.match(answer.reason, /20 descriptor\(s\) came with a frame that may carry 0/);
    ch.close();
    await until("the conversation over", () => lines.some((l) => /refused a request/.test(l)));
    // The server's copies of the 20 descriptors were closed (and the connection's own descriptor).
    await until("descriptors closed", () => openFds() <= before, 2_000).catch(() => {});
    assert.equal(openFds(), before);
  } finally {
    for (const u of extra) await u.close();
    await server.close();
  }
});

Deno.test('a busy old side answers a second connection "refused: busy" at once', async () => {
  await using tmp = await tempPath();
  const lines: string[] = [];
  const server = serveOld(tmp.path, lines, () => {});
  try {
    // The first conversation is under way: sockets received, no answer yet.
    const first = await Takeover.begin(tmp.path, { registry: new SocketRegistry(), logger: quietLogger([]) });
    const started = Date.now();
    await assert.rejects(
      Takeover.begin(tmp.path, { registry: new SocketRegistry(), logger: quietLogger([]) }),
      /refused: busy/,
    );
    assert.ok(Date.now() - started < 1_000, "answered without waiting for the first conversation");
    await first.abort("done");
  } finally {
    await server.close();
  }
});

Deno.test("a new process that hangs up after ready leaves the old side serving, with its control socket made again", async () => {
  await using tmp = await tempPath();
  const lines: string[] = [];
  let handed = false;
  const server = serveOld(tmp.path, lines, () => handed = true);
  try {
    const ch = connectControl(tmp.path);
    await ch.send(message({ type: "takeover", pid: Deno.pid }));
    assert.equal((await ch.receive(5_000)).message && "sockets", "sockets");
    await ch.send(message({ type: "ready" }));
    ch.close(); // gone before the old side answers "draining"
    await until("the failed answer", () => lines.some((l) => /takeover failed; still serving/.test(l)));
    assert.equal(handed, false);
    assert.ok((await Deno.lstat(tmp.path)).isSocket, "the control socket is back");
    // ... and the process can be taken over through it.
    const next = await Takeover.begin(tmp.path, { registry: new SocketRegistry(), logger: quietLogger([]) });
    await next.commit();
    assert.equal(handed, true);
  } finally {
    await server.close();
  }
});

Deno.test("a commit after the old side's ready deadline aborts and throws; the old side goes on", async () => {
  await using tmp = await tempPath();
  const lines: string[] = [];
  let handed = false;
  const server = serveOld(tmp.path, lines, () => handed = true, 50);
  try {
    const t = await Takeover.begin(tmp.path, { registry: new SocketRegistry(), logger: quietLogger([]) });
    assert.ok(t.readyBy <= Date.now() + 50);
    await until("the deadline", () => Date.now() > t.readyBy);
    await assert.rejects(t.commit(), /after the running process stopped waiting/);
    await until("the old side's give-up", () => lines.some((l) => /still serving/.test(l)));
    assert.equal(handed, false);
  } finally {
    await server.close();
  }
});

/** A python3 script run as user nobody (needs root to switch to it, and /usr/bin/python3). */
function asNobody(script: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command("setpriv", {
    args: ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script, ...args],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
}

const canSwitchUser = (() => {
  try {
    return Deno.uid() === 0 && Deno.statSync("/usr/bin/python3").isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "the old side refuses a process of another user, even one the file's permissions let in",
  ignore: !canSwitchUser,
  fn: async () => {
    await using tmp = await tempPath();
    const lines: string[] = [];
    let handed = false;
    const server = serveOld(tmp.path, lines, () => handed = true);
    try {
      // Opened wide on purpose, to reach the credential check behind the permissions.
      await Deno.chmod(tmp.path.replace(/\/[^/]*$/, ""), 0o755);
      await Deno.chmod(tmp.path, 0o666);
      const child = asNobody(
        `import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sys.argv[1])
body = json.dumps({"v": 1, "type": "takeover", "pid": os.getpid()}).encode()
s.sendall(struct.pack(">I", len(body)) + body)
data = b""
while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
    more = s.recv(4096)
    if not more: break
    data += more
print(data[4:].decode())`,
        [tmp.path],
      );
      const out = await child.output();
      const answer = JSON.parse(new TextDecoder().decode(out.stdout)) as { type: string; reason: string };
      assert.equal(answer.type, "refused");
      assert.match(answer.reason, /not user 0/);
      assert.ok(
        lines.some((l) => /refused a connection from another user.*peer_uid=65534/.test(l)),
        lines.join("\n"),
      );
      assert.equal(handed, false);
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name: "Takeover.begin refuses a control socket served by another user",
  ignore: !canSwitchUser,
  fn: async () => {
    await using tmp = await tempPath();
    await Deno.chmod(tmp.path.replace(/\/[^/]*$/, ""), 0o777);
    const child = asNobody(
      `import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(sys.argv[1]); s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
while c.recv(4096): pass`,
      [tmp.path],
    );
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    try {
      assert.match((await reader.read()).value ?? "", /listening/);
      await assert.rejects(
        Takeover.begin(tmp.path, { registry: new SocketRegistry(), logger: quietLogger([]) }),
        /runs as uid 65534, not 0/,
      );
    } finally {
      await child.status;
      reader.releaseLock();
      await child.stdout.cancel().catch(() => {});
    }
  },
});

/** The running process's side of the control socket at `path`, serving, with an empty registry (no sockets). */
function serveOld(path: string, lines: string[], handOver: (pid: number) => void, readyTimeoutMs?: number) {
  const server = ControlServer.open(path, {
    registry: new SocketRegistry(),
    logger: quietLogger(lines),
    drainTimeoutMs: 0,
    handOver,
    ...(readyTimeoutMs === undefined ? {} : { readyTimeoutMs }),
  });
  server.serve();
  return server;
}
