/** Descriptor passing over a unix socket (lib/net/fd_channel.ts): frames with descriptors, received ones work. */
import assert from "node:assert/strict";
import {
  channelPair,
  closeFd,
  connectControl,
  ControlListener,
  effectiveUid,
  FdChannel,
  inspectSocket,
} from "../../lib/net/fd_channel.ts";
import { type Libc, sharedLibc } from "../../lib/net/libc.ts";
import { adoptFastUdp, openFastUdp } from "../../lib/net/udp_fast.ts";

Deno.test("FdChannel sends a frame with a UDP socket's descriptor, and the received one receives", async () => {
  const [a, b] = channelPair();
  const opener = openFastUdp({ host: "127.0.0.1", port: 0 }, {}, false)!;
  const sender = openFastUdp({ host: "127.0.0.1", port: 0 }, {}, false)!;
  try {
    await a.send({ hello: "there", n: 1 }, [opener.descriptor.fd]);
    const frame = await b.receive(5_000);
    assert.deepEqual(frame.message, { hello: "there", n: 1 });
    assert.equal(frame.fds.length, 1);
    const fd = frame.fds[0];
    assert.notEqual(fd, opener.descriptor.fd, "a new descriptor of the same socket");
    const facts = inspectSocket(fd);
    assert.equal(facts.kind, "udp");
    assert.deepEqual(facts.addr, opener.local);
    // The received descriptor reads what is sent to the opener's address.
    const received = adoptFastUdp({ fd, local: opener.local, v6: false, wake: opener.descriptor.wake })!;
    sender.send([new TextEncoder().encode("through the passed socket")], sender.destinations([opener.local]));
    const batch = received.receiveBlocking();
    assert.ok(batch && batch.count === 1);
    assert.equal(new TextDecoder().decode(batch.data(0)), "through the passed socket");
    await received.close();
    closeFd(fd);
  } finally {
    await opener.close();
    await sender.close();
    a.close();
    b.close();
  }
});

Deno.test("FdChannel passes a socketpair end, and bytes written to it arrive at the other end", async () => {
  const [a, b] = channelPair();
  const [x, y] = channelPair();
  try {
    await a.send({ pass: "x" }, [x.fd]);
    const frame = await b.receive(5_000);
    assert.equal(frame.fds.length, 1);
    x.close(); // only the passed copy is left
    // The passed end speaks the same framing: a frame sent through it reaches y.
    const passed = new FdChannel(sharedLibc()!.symbols as unknown as Libc, frame.fds[0]);
    await passed.send({ via: "passed descriptor" });
    assert.deepEqual((await y.receive(5_000)).message, { via: "passed descriptor" });
    passed.close();
  } finally {
    a.close();
    b.close();
    y.close();
  }
});

Deno.test("FdChannel reassembles a frame larger than one read and many descriptors in one frame", async () => {
  const [a, b] = channelPair();
  const sockets = Array.from({ length: 50 }, () => openFastUdp({ host: "127.0.0.1", port: 0 }, {}, false)!);
  try {
    const big = "x".repeat(300_000);
    const sending = a.send({ big }, sockets.map((s) => s.descriptor.fd));
    const frame = await b.receive(5_000);
    await sending;
    assert.equal((frame.message as { big: string }).big.length, big.length);
    assert.equal(frame.fds.length, 50);
    frame.fds.forEach((fd, i) => assert.deepEqual(inspectSocket(fd).addr, sockets[i].local));
    frame.fds.forEach(closeFd);
  } finally {
    for (const s of sockets) await s.close();
    a.close();
    b.close();
  }
});

Deno.test("FdChannel.receive says the peer closed, and times out when nothing comes", async () => {
  const [a, b] = channelPair();
  await assert.rejects(b.receive(50), /No answer on the control socket in 50 ms/);
  a.close();
  await assert.rejects(b.receive(5_000), /The peer closed the control socket/);
  b.close();
});

Deno.test("ControlListener makes the socket 0600, refuses a live one, replaces a stale one, and unlinks its own", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/control.sock`;
  try {
    const first = ControlListener.open(path);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    const stop = new AbortController();
    const accepted = first.accept(stop.signal);
    const client = connectControl(path);
    const server = await accepted;
    assert.ok(server);
    await client.send({ ping: 1 });
    assert.deepEqual((await server!.receive(5_000)).message, { ping: 1 });
    client.close();
    server!.close();
    // A second listener at a path a live one answers on is refused.
    const accepting = first.accept(stop.signal);
    assert.throws(() => ControlListener.open(path), /a running process answers on it/);
    (await accepting)?.close();
    stop.abort();
    // A stale socket file (its listener gone without removing it) is replaced.
    first.unlink = () => {}; // leave the file behind, as a killed process does
    first.close();
    assert.ok((await Deno.stat(path)).isSocket, "the stale file stays");
    const second = ControlListener.open(path);
    connectControl(path).close(); // the new one answers
    second.close();
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
    // A file that is not a socket is never removed.
    await Deno.writeTextFile(path, "mine");
    assert.throws(() => ControlListener.open(path), /exists and is not a socket/);
    assert.equal(await Deno.readTextFile(path), "mine");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("FdChannel.receive closes descriptors on a frame that may carry none, and refuses it", async () => {
  const [a, b] = channelPair();
  const [x, y] = channelPair();
  try {
    await a.send({ n: 1 }, [x.fd]);
    await assert.rejects(
      b.receive(5_000, { maxFds: 0 }),
      /1 descriptor\(s\) came with a frame that may carry 0/,
    );
    x.close();
    // The received copy was closed: with x closed too, y sees its peer gone.
    await assert.rejects(y.receive(5_000), /The peer closed the control socket/);
  } finally {
    a.close();
    b.close();
    y.close();
  }
});

Deno.test("FdChannel gives descriptors to the frame they were sent with, when frames arrive in one read", async () => {
  const [a, b] = channelPair();
  const sockets = Array.from({ length: 3 }, () => openFastUdp({ host: "127.0.0.1", port: 0 }, {}, false)!);
  try {
    // Both frames are in the socket before the first receive: one without descriptors, one with three.
    await a.send({ first: true });
    await a.send({ second: true }, sockets.map((s) => s.descriptor.fd));
    await a.send({ third: true });
    const first = await b.receive(5_000);
    assert.deepEqual(first, { message: { first: true }, fds: [] });
    const second = await b.receive(5_000);
    assert.deepEqual(second.message, { second: true });
    assert.equal(second.fds.length, 3);
    second.fds.forEach((fd, i) => assert.deepEqual(inspectSocket(fd).addr, sockets[i].local));
    second.fds.forEach(closeFd);
    assert.deepEqual(await b.receive(5_000), { message: { third: true }, fds: [] });
  } finally {
    for (const s of sockets) await s.close();
    a.close();
    b.close();
  }
});

Deno.test("FdChannel.peer says the peer's pid and uid as the kernel knows them", () => {
  const [a, b] = channelPair();
  try {
    assert.deepEqual(a.peer(), { pid: Deno.pid, uid: effectiveUid() });
    assert.deepEqual(b.peer(), { pid: Deno.pid, uid: effectiveUid() });
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("ControlListener works at a 100-byte path (the longest the config accepts)", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/${"c".repeat(100 - dir.length - 1)}`;
  assert.equal(new TextEncoder().encode(path).length, 100);
  try {
    const listener = ControlListener.open(path);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    const stop = new AbortController();
    const accepted = listener.accept(stop.signal);
    const client = connectControl(path);
    const server = (await accepted)!;
    await client.send({ ping: 1 });
    assert.deepEqual((await server.receive(5_000)).message, { ping: 1 });
    client.close();
    server.close();
    listener.close();
    assert.deepEqual([...Deno.readDirSync(dir)], [], "no temporary name left behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ControlListener.accept out of descriptors says so once and waits between tries instead of spinning", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // In a process of its own: it takes every descriptor it may open.
    const out = await new Deno.Command("sh", {
      args: [
        "-c",
        `ulimit -n 64 && exec "$0" run --no-prompt --allow-all "$1" "$2"`,
        Deno.execPath(),
        new URL("./_accept_shortage_child.ts", import.meta.url).pathname,
        dir,
      ],
      env: { DENO_NO_UPDATE_CHECK: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const r = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
    assert.ok(r.accepted, "accepted once descriptors were free again");
    assert.ok(r.cpuMs < 300, `${r.cpuMs} ms of CPU in 1 s of failing accepts`);
    assert.equal(r.errors.length, 1, r.errors.join("\n"));
    assert.match(r.errors[0], /too many open files \(retrying\)/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
