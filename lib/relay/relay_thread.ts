/// <reference lib="deno.worker" />
/**
 * A forwarding data path on a thread of its own, as a C relay runs it: wait in recvmmsg, send the batch with
 * sendmmsg, again. It carries a relay (its socket to fixed targets) and a reflector's path (its data socket to the
 * participants, sent from the registration socket, the list read from shared memory: lib/relay/shared_targets.ts).
 * The main thread opened the sockets and owns them; this thread adopts them with buffers of its own and counts into
 * memory the main thread reads (lib/relay/relay.ts). The loop never returns to this thread's event loop, so it is
 * stopped through shared memory: the main thread sets the stop cell and wakes the loop through the socket's eventfd
 * (`FastUdp.interrupt()`: poll(2) on the socket and the eventfd, the socket itself untouched, so a process it was
 * handed to by a takeover goes on reading it); the loop sees the cell, lets go of the sockets and says "stopped".
 * Whatever a receive took before the stop is sent on first: a hand-over loses no datagram here.
 */
import { isRtcp, isRtp } from "../media/rtp.ts";
import { adoptFastUdp, type FastDescriptor } from "../net/udp_fast.ts";
import { SourceAllowList } from "../net/allow.ts";
import { type Endpoint, sharedStats, type UdpOptions } from "../net/udp.ts";
import { admit } from "./admit.ts";
import { type SharedTargetsMemory, SharedTargetsReader } from "./shared_targets.ts";

export interface RelayThreadStart {
  /** The socket datagrams arrive on. */
  readonly descriptor: FastDescriptor;
  readonly options: UdpOptions;
  /** UdpStats cells (see sharedStats) of the receiving socket (and of the sending one when it is the same). */
  readonly stats: SharedArrayBuffer;
  /** Int32 cell 0: set to 1 to stop. */
  readonly control: SharedArrayBuffer;
  /** Where datagrams go: fixed targets with a Float64 per target (sent, dropped), or a shared participant list. */
  readonly to:
    | {
      readonly targets: readonly Endpoint[];
      readonly sent: SharedArrayBuffer;
      readonly dropped: SharedArrayBuffer;
    }
    | { readonly shared: SharedTargetsMemory };
  /** Another socket to send from (a reflector's registration socket), with stats cells of its own. */
  readonly out?: { readonly descriptor: FastDescriptor; readonly stats: SharedArrayBuffer };
  /** Only well-formed RTP (or RTCP) datagrams go on. */
  readonly valid?: "rtp" | "rtcp";
  /** Only datagrams from these source prefixes go on (empty: any source). */
  readonly allow: readonly string[];
  /** Float64 cells (lib/relay/admit.ts DROP) counting what was not sent on: malformed, empty, denied. */
  readonly drops: SharedArrayBuffer;
}

export type RelayThreadReport = { readonly ready: true } | { readonly stopped: true } | {
  readonly error: string;
};

self.onmessage = (event: MessageEvent<RelayThreadStart>) => {
  const m = event.data;
  const report = (r: RelayThreadReport) => self.postMessage(r);
  const allow = SourceAllowList.parse(m.allow);
  // Without an allow-list nothing here looks at who sent a datagram: the kernel need not say.
  const socket = adoptFastUdp(m.descriptor, m.options, sharedStats(m.stats), !allow.allowsAll);
  const out = m.out ? adoptFastUdp(m.out.descriptor, m.options, sharedStats(m.out.stats)) : socket;
  if (!socket || !out) {
    report({ error: "FFI to libc is not available in the relay thread" });
    return;
  }
  const reader = "shared" in m.to ? new SharedTargetsReader(m.to.shared) : null;
  let to = "targets" in m.to
    ? out.destinations(m.to.targets, {
      sent: new Float64Array(m.to.sent),
      dropped: new Float64Array(m.to.dropped),
    })
    : out.destinations([]);
  const rules = { allow, valid: m.valid ? (m.valid === "rtp" ? isRtp : isRtcp) : null };
  const drops = new Float64Array(m.drops);
  const control = new Int32Array(m.control);
  // Wait in the kernel until data comes: stop() wakes the wait, so no timer needs arming at every wait.
  socket.setWaitSlice(0);
  report({ ready: true });
  for (;;) {
    const batch = socket.receiveBlocking(control);
    if (!batch) break;
    if (!batch.count) continue;
    if (reader) {
      const list = reader.changed();
      if (list) to = out.destinations(list);
    }
    out.send(admit(batch, rules, drops), to);
    reader?.credit(to.sent, to.dropped);
  }
  if (out !== socket) void out.close();
  void socket.close();
  report({ stopped: true });
  self.close();
};
