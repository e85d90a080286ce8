/// <reference lib="deno.worker" />
/**
 * One relay's data path on a thread of its own, as a C relay runs it: wait in recvmmsg, send the batch with
 * sendmmsg, again. The main thread opened the socket and owns it; this thread adopts it with buffers of its own and
 * counts into memory the main thread reads (lib/relay/relay.ts). The loop never returns to this thread's event loop,
 * so it is stopped through shared memory: the main thread sets the stop cell and interrupts the socket, the loop sees
 * the cell, lets go of the socket and says "stopped".
 */
import { adoptFastUdp, type FastDescriptor } from "../net/udp_fast.ts";
import { type Endpoint, sharedStats, type UdpOptions } from "../net/udp.ts";

export interface RelayThreadStart {
  readonly descriptor: FastDescriptor;
  readonly options: UdpOptions;
  readonly targets: readonly Endpoint[];
  /** UdpStats cells (see sharedStats). */
  readonly stats: SharedArrayBuffer;
  /** Float64 per target: datagrams sent, then datagrams dropped. */
  readonly sent: SharedArrayBuffer;
  readonly dropped: SharedArrayBuffer;
  /** Int32 cell 0: set to 1 to stop. */
  readonly control: SharedArrayBuffer;
}

export type RelayThreadReport = { readonly ready: true } | { readonly stopped: true } | {
  readonly error: string;
};

self.onmessage = (event: MessageEvent<RelayThreadStart>) => {
  const m = event.data;
  const report = (r: RelayThreadReport) => self.postMessage(r);
  const socket = adoptFastUdp(m.descriptor, m.options, sharedStats(m.stats));
  if (!socket) {
    report({ error: "FFI to libc is not available in the relay thread" });
    return;
  }
  const to = socket.destinations(m.targets, {
    sent: new Float64Array(m.sent),
    dropped: new Float64Array(m.dropped),
  });
  const control = new Int32Array(m.control);
  // Wait in the kernel until data comes: stop() interrupts the socket, so no timer needs arming at every wait.
  socket.setWaitSlice(0);
  report({ ready: true });
  for (;;) {
    const batch = socket.receiveBlocking(control);
    if (!batch) break;
    if (batch.count) socket.send(batch, to);
  }
  void socket.close();
  report({ stopped: true });
  self.close();
};
