/**
 * A wide-area delay line between network namespaces, in user space: one TUN device per member, each later moved
 * into its member's namespace; every IPv4 packet a member sends to another member's address is held for the
 * configured one-way delay of that pair, then written into the other member's device.
 *
 * Why not `tc netem`: the kernel of these machines (and CI, which runs on the same kind) is built without sch_netem
 * (CONFIG_NET_SCH_NETEM is not set: "Specified qdisc kind is unknown"), and no other qdisc it has can delay. TUN is
 * there. A delay line in one process also closes every device when it ends, however it ends: nothing stays behind.
 *
 * Run by tests/_support/netns.ts as `deno run --allow-ffi --allow-read delay_line.ts CONFIG_JSON`. It prints
 * `ready` once every device exists, runs until its stdin closes (its parent ended, or asks it to stop), then prints
 * one line of counters as JSON and exits; a SIGTERM just ends it (the devices go all the same). Queues are bounded
 * (a full one drops and counts).
 *
 * CONFIG_JSON: { "members": [{ "ifname": "en123t0", "address": "10.77.0.1" }, ...],
 *                "delays": { "10.77.0.1>10.77.0.2": 3, ... }, "defaultDelayMs": 2 }
 */

const O_RDWR = 2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const TUNSETIFF = 0x400454can;
const IFF_TUN = 0x0001;
const IFF_NO_PI = 0x1000;
const POLLIN = 1;
/** Packets one pair may hold (a few ms of a fast stream); more are dropped and counted. */
const MAX_QUEUE = 20_000;
const MTU_BUFFER = 65_536;

interface Config {
  readonly members: readonly { readonly ifname: string; readonly address: string }[];
  readonly delays?: Readonly<Record<string, number>>;
  readonly defaultDelayMs?: number;
}

const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  ppoll: { parameters: ["buffer", "u64", "buffer", "pointer"], result: "i32" },
} as const;

interface Held {
  readonly due: number;
  readonly packet: Uint8Array;
}

/** One direction of one pair: packets in arrival order, all with the same delay, so due times only grow. */
class Queue {
  readonly items: Held[] = [];
  head = 0;
  get size(): number {
    return this.items.length - this.head;
  }
  push(h: Held): void {
    this.items.push(h);
  }
  peek(): Held | undefined {
    return this.items[this.head];
  }
  shift(): Held {
    const h = this.items[this.head++];
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items.splice(0, this.head);
      this.head = 0;
    }
    return h;
  }
}

function ipv4(text: string): number {
  const parts = text.split(".").map(Number);
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
}

function main(config: Config): void {
  const lib = Deno.dlopen("libc.so.6", SYMBOLS);
  const c = lib.symbols;
  const fds: number[] = [];
  const byAddress = new Map<number, number>(); // address -> member index
  config.members.forEach((m, i) => byAddress.set(ipv4(m.address), i));
  const delay = (from: number, to: number) =>
    config.delays?.[`${config.members[from].address}>${config.members[to].address}`] ??
      config.defaultDelayMs ?? 0;
  const counts = { forwarded: 0, dropped_full: 0, dropped_unknown: 0, dropped_write: 0, late_ms_max: 0 };

  for (const m of config.members) {
    const fd = c.open(new TextEncoder().encode("/dev/net/tun\0"), O_RDWR | O_NONBLOCK | O_CLOEXEC, 0);
    if (fd < 0) throw new Error(`Cannot open /dev/net/tun for ${m.ifname}`);
    const ifreq = new Uint8Array(40);
    ifreq.set(new TextEncoder().encode(m.ifname).subarray(0, 15));
    new DataView(ifreq.buffer).setUint16(16, IFF_TUN | IFF_NO_PI, true);
    if (c.ioctl(fd, TUNSETIFF, ifreq) < 0) throw new Error(`Cannot create TUN device ${m.ifname}`);
    fds.push(fd);
  }

  const n = fds.length;
  const queues: Queue[] = Array.from({ length: n * n }, () => new Queue());
  // Long-lived buffers whose pointers go to the kernel. The last pollfd is stdin: the parent's end closes it.
  const pollfds = new Uint8Array(8 * (n + 1));
  const pollView = new DataView(pollfds.buffer);
  const timespec = new BigInt64Array(2);
  const slab = new Uint8Array(MTU_BUFFER);
  const stdinBuf = new Uint8Array(64);
  for (let i = 0; i <= n; i++) {
    pollView.setInt32(i * 8, i < n ? fds[i] : 0, true);
    pollView.setInt16(i * 8 + 4, POLLIN, true);
  }

  /** Writes every packet due by now; returns when the next one falls due (Infinity: none held). */
  const release = (now: number): number => {
    let next = Infinity;
    for (let q = 0; q < queues.length; q++) {
      const queue = queues[q];
      const to = q % n;
      let h = queue.peek();
      while (h && h.due <= now) {
        queue.shift();
        if (now - h.due > counts.late_ms_max) counts.late_ms_max = now - h.due;
        if (c.write(fds[to], h.packet, BigInt(h.packet.length)) < 0) counts.dropped_write++;
        else counts.forwarded++;
        h = queue.peek();
      }
      if (h && h.due < next) next = h.due;
    }
    return next;
  };

  const readAll = (from: number) => {
    // A bounded turn per device, so that due packets are not held up behind a flood.
    for (let k = 0; k < 256; k++) {
      const got = Number(c.read(fds[from], slab, BigInt(MTU_BUFFER)));
      if (got <= 0) return; // EAGAIN: drained
      if (got < 20 || (slab[0] >> 4) !== 4) {
        counts.dropped_unknown++;
        continue;
      }
      const dst = ((slab[16] << 24) | (slab[17] << 16) | (slab[18] << 8) | slab[19]) >>> 0;
      const to = byAddress.get(dst);
      if (to === undefined || to === from) {
        counts.dropped_unknown++;
        continue;
      }
      const queue = queues[from * n + to];
      if (queue.size >= MAX_QUEUE) {
        counts.dropped_full++;
        continue;
      }
      queue.push({ due: performance.now() + delay(from, to), packet: slab.slice(0, got) });
    }
  };

  console.log("ready");
  // One synchronous loop (this process does nothing else): ppoll until a packet arrives or the next one falls
  // due, with a microsecond timeout, so no timer or thread hop stands between a due packet and its write.
  let next = Infinity;
  for (;;) {
    const wait = next === Infinity ? 200 : Math.max(0, next - performance.now());
    const us = Math.floor(wait * 1000);
    timespec[0] = BigInt(Math.floor(us / 1e6));
    timespec[1] = BigInt((us % 1e6) * 1000);
    for (let i = 0; i <= n; i++) pollView.setInt16(i * 8 + 6, 0, true);
    const ready = c.ppoll(pollfds, BigInt(n + 1), timespec, null);
    if (ready > 0) {
      if (pollView.getInt16(n * 8 + 6, true) !== 0 && c.read(0, stdinBuf, 64n) <= 0) break; // parent gone
      for (let i = 0; i < n; i++) {
        if (pollView.getInt16(i * 8 + 6, true) & POLLIN) readAll(i);
      }
    }
    next = release(performance.now());
  }
  for (const fd of fds) c.close(fd);
  lib.close();
  counts.late_ms_max = Math.round(counts.late_ms_max * 1000) / 1000;
  console.log(JSON.stringify(counts));
  Deno.exit(0);
}

if (import.meta.main) {
  main(JSON.parse(Deno.args[0]) as Config);
}
