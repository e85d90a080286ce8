/**
 * A unix stream socket that carries small length-prefixed JSON frames and open descriptors with them (SCM_RIGHTS,
 * sendmsg/recvmsg through FFI to libc): the takeover's control socket (lib/takeover/). Deno's own unix sockets keep
 * their descriptors, so this one is opened through libc as the fast paths are.
 *
 * Frame: u32 big-endian length, then that many bytes of UTF-8 JSON. Descriptors ride on the first bytes of the frame
 * they belong to; the receiver takes them close-on-exec.
 *
 * Memory: each channel and listener owns one slab that holds every struct the kernel sees (msghdr, iovec, control
 * buffer, pollfd, sockaddr_un) and the data; nothing passed by pointer is a short-lived or small array (PLATFORM.md).
 */
import { StartError } from "../core/errors.ts";
import type { HostPort } from "./address.ts";
import {
  AF_INET,
  AF_INET6,
  AF_UNIX,
  CMSG_DATA,
  CMSG_LEVEL,
  CMSG_TYPE,
  describeErrno,
  EAGAIN,
  ECONNREFUSED,
  EINTR,
  EMFILE,
  ENFILE,
  ENOBUFS,
  ENOENT,
  ENOMEM,
  errno,
  type Libc,
  MSG_CMSG_CLOEXEC,
  MSG_CONTROL,
  MSG_CONTROLLEN,
  MSG_DONTWAIT,
  MSG_FLAGS,
  MSG_IOV,
  MSG_IOVLEN,
  MSG_NOSIGNAL,
  POLLIN,
  POLLOUT,
  readSockaddr,
  SCM_RIGHTS,
  sharedLibc,
  SO_ACCEPTCONN,
  SO_PEERCRED,
  SO_TYPE,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_STREAM,
  SOCKADDR_SIZE,
  SOCKADDR_UN_SIZE,
  SOL_SOCKET,
} from "./libc.ts";

/** Most descriptors one frame carries (the kernel's SCM_MAX_FD is 253). */
export const MAX_FDS_PER_FRAME = 200;
/** Largest frame accepted: control messages are small; anything bigger is not a peer speaking this protocol. */
export const MAX_FRAME_BYTES = 1024 * 1024;
const MSG_CTRUNC = 0x8;
/** How often a wait looks at its signal and deadline. */
const SLICE_MS = 200;

// Slab layout.
const HDR = 0; // struct msghdr (56)
const IOV = 64; // struct iovec (16)
const CTL = 128; // control buffer
const CTL_SIZE = 16 + MAX_FDS_PER_FRAME * 4 + 8;
const POLL = 1024; // struct pollfd (8)
const NAME = 1088; // struct sockaddr_un (110) / sockaddr_in6, and socklen_t after it
const LEN = 1216; // socklen_t / int scratch
const DATA = 2048;
const DATA_SIZE = 64 * 1024;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A frame as received: its JSON and the descriptors that came with it (the receiver owns them). */
export interface Frame {
  readonly message: unknown;
  readonly fds: number[];
}

export interface ReceiveOptions {
  /** Stops the wait (ChannelError "Stopped waiting for the peer"). */
  readonly signal?: AbortSignal;
  /** Most descriptors the frame may carry (default MAX_FDS_PER_FRAME); more are closed and the frame refused. */
  readonly maxFds?: number;
}

/** Who is at the other end of a unix socket, as the kernel says (SO_PEERCRED). */
export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
}

export class ChannelError extends Error {
  override name = "ChannelError";
}

function libcOrThrow(): Libc {
  const lib = sharedLibc();
  if (!lib) throw new StartError("Cannot use a control socket: it needs Linux and --allow-ffi");
  return lib.symbols as unknown as Libc;
}

/** Memory the kernel sees, owned by one channel or listener for its life. */
class Slab {
  readonly bytes = new Uint8Array(DATA + DATA_SIZE);
  readonly view = new DataView(this.bytes.buffer);
  readonly base = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.bytes)));

  put64(at: number, value: number): void {
    this.view.setUint32(at, value >>> 0, true);
    this.view.setUint32(at + 4, Math.floor(value / 2 ** 32), true);
  }

  /** Writes a sockaddr_un for `path` at NAME; returns its length. */
  unixName(path: string): number {
    const bytes = encoder.encode(path);
    if (bytes.length >= SOCKADDR_UN_SIZE - 2) {
      throw new StartError(`Cannot use control socket "${path}": the path is longer than 107 bytes`);
    }
    this.bytes.fill(0, NAME, NAME + SOCKADDR_UN_SIZE);
    this.view.setUint16(NAME, AF_UNIX, true);
    this.bytes.set(bytes, NAME + 2);
    return 2 + bytes.length + 1;
  }

  name(): Uint8Array {
    return this.bytes.subarray(NAME, NAME + 128);
  }

  pollfd(fd: number, events = POLLIN): Uint8Array {
    this.view.setInt32(POLL, fd, true);
    this.view.setInt16(POLL + 4, events, true);
    this.view.setInt16(POLL + 6, 0, true);
    return this.bytes.subarray(POLL, POLL + 8);
  }
}

/**
 * Waits until `fd` is ready for `events`, off the main thread in slices so `signal` and the deadline are looked at; false when
 * the deadline passed or the signal aborted first.
 */
async function ready(
  c: Libc,
  slab: Slab,
  fd: number,
  events: number,
  deadline: number,
  signal?: AbortSignal,
): Promise<boolean> {
  for (;;) {
    if (signal?.aborted) return false;
    const left = deadline - Date.now();
    if (left <= 0) return false;
    const n = await (c.poll_wait(slab.pollfd(fd, events), 1n, Math.min(SLICE_MS, Math.ceil(left))) as Promise<
      number
    >);
    if (n > 0) return true;
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** A connected control socket. Not for concurrent use: one request, one answer. */
export class FdChannel {
  readonly #c: Libc;
  readonly #slab = new Slab();
  #fd: number;
  /** Bytes received past the frame last returned. */
  #pending = new Uint8Array(0);
  /** Bytes received on this channel in all (the stream offset just past `#pending`). */
  #received = 0;
  /** Descriptors received and not yet given to a frame, with the stream bytes of the read that brought them. */
  readonly #fdQueue: { readonly from: number; readonly to: number; readonly fds: number[] }[] = [];

  constructor(c: Libc, fd: number) {
    this.#c = c;
    this.#fd = fd;
  }

  get fd(): number {
    return this.#fd;
  }

  /**
   * Sends `message` as one frame with `fds` attached (the sender keeps its own copies open), waiting off the main
   * thread while the socket's buffer is full (at most `timeoutMs`).
   */
  async send(message: unknown, fds: readonly number[] = [], timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    if (this.#fd < 0) throw new ChannelError("Cannot send: the control socket is closed");
    if (fds.length > MAX_FDS_PER_FRAME) {
      throw new ChannelError(
        `Cannot send ${fds.length} descriptors in one frame (at most ${MAX_FDS_PER_FRAME})`,
      );
    }
    const body = encoder.encode(JSON.stringify(message));
    if (body.length > MAX_FRAME_BYTES) throw new ChannelError(`Cannot send a frame of ${body.length} bytes`);
    const frame = new Uint8Array(4 + body.length);
    new DataView(frame.buffer).setUint32(0, body.length, false);
    frame.set(body, 4);
    const s = this.#slab, c = this.#c;
    let at = 0;
    let first = true;
    while (at < frame.length) {
      const chunk = Math.min(DATA_SIZE, frame.length - at);
      s.bytes.set(frame.subarray(at, at + chunk), DATA);
      s.bytes.fill(0, HDR, CTL + CTL_SIZE);
      s.put64(IOV, s.base + DATA);
      s.put64(IOV + 8, chunk);
      s.put64(HDR + MSG_IOV, s.base + IOV);
      s.put64(HDR + MSG_IOVLEN, 1);
      if (first && fds.length) {
        const len = 16 + fds.length * 4;
        s.put64(CTL, len);
        s.view.setInt32(CTL + CMSG_LEVEL, SOL_SOCKET, true);
        s.view.setInt32(CTL + CMSG_TYPE, SCM_RIGHTS, true);
        fds.forEach((fd, i) => s.view.setInt32(CTL + CMSG_DATA + i * 4, fd, true));
        s.put64(HDR + MSG_CONTROL, s.base + CTL);
        s.put64(HDR + MSG_CONTROLLEN, Math.ceil(len / 8) * 8);
      }
      const n = c.sendmsg(this.#fd, s.bytes.subarray(HDR, HDR + 64), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        const e = errno(c);
        if (e === EINTR) continue;
        if (e !== EAGAIN) throw new ChannelError(`Cannot send on the control socket: ${describeErrno(c, e)}`);
        if (!await ready(c, s, this.#fd, POLLOUT, deadline)) {
          throw new ChannelError(
            `Cannot send on the control socket: the peer read nothing in ${timeoutMs} ms`,
          );
        }
        continue;
      }
      at += n;
      first = false;
    }
  }

  /**
   * The next frame, waiting at most `timeoutMs`; throws ChannelError when the peer closed, the wait ran out, the
   * signal aborted, or the bytes are not a frame. `maxFds` is how many descriptors the frame may carry: any more that
   * came with it are closed and the frame is refused (ChannelError), so a peer cannot make this process hold
   * descriptors it never asked for (`maxFds: 0` for a frame that should carry none).
   */
  async receive(timeoutMs: number, options: ReceiveOptions = {}): Promise<Frame> {
    const { signal, maxFds = MAX_FDS_PER_FRAME } = options;
    const deadline = Date.now() + timeoutMs;
    const s = this.#slab, c = this.#c;
    for (;;) {
      const frame = this.#frame();
      if (frame) {
        if (frame.fds.length > maxFds) {
          for (const fd of frame.fds) c.close(fd);
          throw new ChannelError(
            `Cannot receive: ${frame.fds.length} descriptor(s) came with a frame that may carry ${maxFds}; closed`,
          );
        }
        return frame;
      }
      if (this.#fd < 0) throw new ChannelError("Cannot receive: the control socket is closed");
      s.bytes.fill(0, HDR, CTL + CTL_SIZE);
      s.put64(IOV, s.base + DATA);
      s.put64(IOV + 8, DATA_SIZE);
      s.put64(HDR + MSG_IOV, s.base + IOV);
      s.put64(HDR + MSG_IOVLEN, 1);
      s.put64(HDR + MSG_CONTROL, s.base + CTL);
      s.put64(HDR + MSG_CONTROLLEN, CTL_SIZE);
      const n = c.recvmsg(this.#fd, s.bytes.subarray(HDR, HDR + 64), MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n < 0) {
        const e = errno(c);
        if (e === EINTR) continue;
        if (e !== EAGAIN) {
          throw new ChannelError(`Cannot receive on the control socket: ${describeErrno(c, e)}`);
        }
        if (!await ready(c, s, this.#fd, POLLIN, deadline, signal)) {
          throw new ChannelError(
            signal?.aborted
              ? "Stopped waiting for the peer"
              : `No answer on the control socket in ${timeoutMs} ms`,
          );
        }
        continue;
      }
      const fds: number[] = [];
      this.#takeFds(fds);
      if (fds.length) this.#fdQueue.push({ from: this.#received, to: this.#received + Math.max(n, 1), fds });
      if ((s.view.getInt32(HDR + MSG_FLAGS, true) & MSG_CTRUNC) !== 0) {
        throw new ChannelError("Cannot receive: descriptors were cut (too many in one frame)");
      }
      if (n === 0) throw new ChannelError("The peer closed the control socket");
      const more = new Uint8Array(this.#pending.length + n);
      more.set(this.#pending);
      more.set(s.bytes.subarray(DATA, DATA + n), this.#pending.length);
      this.#pending = more;
      this.#received += n;
    }
  }

  /**
   * The uid and pid of the process at the other end, as the kernel recorded them when the connection was made
   * (SO_PEERCRED), not as the peer says.
   */
  peer(): PeerCredentials {
    const c = this.#c, s = this.#slab;
    s.view.setUint32(LEN + 16, 12, true);
    if (
      c.getsockopt(
        this.#fd,
        SOL_SOCKET,
        SO_PEERCRED,
        s.bytes.subarray(LEN, LEN + 12),
        s.bytes.subarray(LEN + 16),
      ) !== 0
    ) {
      throw new ChannelError(`Cannot ask who the peer is: ${describeErrno(c, errno(c))}`);
    }
    return { pid: s.view.getInt32(LEN, true), uid: s.view.getUint32(LEN + 4, true) };
  }

  /** The descriptors of every SCM_RIGHTS message in the control buffer just received. */
  #takeFds(into: number[]): void {
    const s = this.#slab;
    const total = s.view.getUint32(HDR + MSG_CONTROLLEN, true);
    let at = 0;
    while (at + 16 <= total) {
      const len = s.view.getUint32(CTL + at, true);
      if (len < 16) break;
      if (
        s.view.getInt32(CTL + at + CMSG_LEVEL, true) === SOL_SOCKET &&
        s.view.getInt32(CTL + at + CMSG_TYPE, true) === SCM_RIGHTS
      ) {
        for (let k = 0; k < (len - 16) / 4; k++) {
          into.push(s.view.getInt32(CTL + at + CMSG_DATA + k * 4, true));
        }
      }
      at += Math.ceil(len / 8) * 8;
    }
  }

  /**
   * A whole frame off the front of what was received, with its descriptors, or null. The kernel delivers descriptors
   * with the first byte of the sendmsg they rode on (a frame's first), and a read that takes them ends with that
   * message: so they belong to the last frame that starts within the bytes of that read, whichever call read them.
   */
  #frame(): Frame | null {
    const p = this.#pending;
    if (p.length < 4) return null;
    const len = new DataView(p.buffer, p.byteOffset).getUint32(0, false);
    if (len > MAX_FRAME_BYTES) {
      throw new ChannelError(`Cannot receive a frame of ${len} bytes: not a control peer`);
    }
    if (p.length < 4 + len) return null;
    const body = p.subarray(4, 4 + len);
    const start = this.#received - p.length;
    const end = start + 4 + len;
    this.#pending = p.slice(4 + len);
    const fds: number[] = [];
    // Entries wholly before this frame's start belonged to a frame already returned (none can: dropped for safety).
    while (this.#fdQueue.length && this.#fdQueue[0].to <= start) {
      for (const fd of this.#fdQueue.shift()!.fds) this.#c.close(fd);
    }
    const head = this.#fdQueue[0];
    if (head && head.from <= start && start < head.to && end >= head.to) {
      fds.push(...this.#fdQueue.shift()!.fds);
    }
    try {
      return { message: JSON.parse(decoder.decode(body)), fds };
    } catch {
      for (const fd of fds) this.#c.close(fd);
      throw new ChannelError("Cannot receive: a frame that is not JSON (not a control peer)");
    }
  }

  /** Closes the socket and every received descriptor no frame took. */
  close(): void {
    for (const entry of this.#fdQueue.splice(0)) for (const fd of entry.fds) this.#c.close(fd);
    if (this.#fd < 0) return;
    this.#c.close(this.#fd);
    this.#fd = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Connects to the control socket at `path`; throws ChannelError saying why not (no file, nothing answers). */
export function connectControl(path: string): FdChannel {
  const c = libcOrThrow();
  const slab = new Slab();
  const len = slab.unixName(path);
  const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new ChannelError(`Cannot open a unix socket: ${describeErrno(c, errno(c))}`);
  if (c.connect(fd, slab.name(), len) !== 0) {
    const e = errno(c);
    c.close(fd);
    const why = e === ENOENT
      ? "no such socket"
      : e === ECONNREFUSED
      ? "nothing answers on it (a stale socket file?)"
      : describeErrno(c, e);
    throw new ChannelError(`Cannot connect to control socket "${path}": ${why}`);
  }
  return new FdChannel(c, fd);
}

/**
 * A listening control socket at `path`. The file is made by binding a name beside it, setting mode 0600 and renaming
 * it into place, so the path never exists with looser permission; those permissions (owner only) are its only guard.
 * A file already at `path` is removed only when nothing answers on it (a stale socket); a live one is an error.
 */
export class ControlListener {
  readonly #c: Libc;
  readonly #slab = new Slab();
  #fd: number;
  #ino: number | null;

  private constructor(c: Libc, fd: number, readonly path: string, ino: number | null) {
    this.#c = c;
    this.#fd = fd;
    this.#ino = ino;
  }

  static open(path: string): ControlListener {
    const c = libcOrThrow();
    removeIfStale(path);
    const slab = new Slab();
    slab.unixName(path); // the final name must fit
    const beside = besideName(path);
    const len = slab.unixName(beside);
    const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new StartError(`Cannot open control socket "${path}": ${describeErrno(c, errno(c))}`);
    let bound = false;
    try {
      // Only a socket left by an earlier try is removed (never a file someone else put there).
      try {
        if (Deno.lstatSync(beside).isSocket) Deno.removeSync(beside);
      } catch { /* none left */ }
      if (c.bind(fd, slab.name(), len) !== 0) {
        throw new StartError(`Cannot bind control socket "${beside}": ${describeErrno(c, errno(c))}`);
      }
      bound = true;
      Deno.chmodSync(beside, 0o600);
      if (c.listen(fd, 8) !== 0) {
        throw new StartError(`Cannot listen on control socket "${path}": ${describeErrno(c, errno(c))}`);
      }
      Deno.renameSync(beside, path);
      return new ControlListener(c, fd, path, Deno.statSync(path).ino);
    } catch (error) {
      c.close(fd);
      if (bound) {
        try {
          Deno.removeSync(beside);
        } catch { /* renamed or gone */ }
      }
      if (error instanceof StartError) throw error;
      throw new StartError(`Cannot make control socket "${path}": ${(error as Error).message}`);
    }
  }

  /**
   * The next connection, or null once the signal aborted or the listener closed. When accept4 fails (out of
   * descriptors or memory: EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything else), `onError` hears of it once per kind of
   * failure, and the next try waits a slice, so a failing accept never spins.
   */
  async accept(signal: AbortSignal, onError?: (message: string) => void): Promise<FdChannel | null> {
    const c = this.#c;
    let failed = 0;
    for (;;) {
      if (this.#fd < 0 || signal.aborted) return null;
      const n = await (c.poll_wait(this.#slab.pollfd(this.#fd), 1n, SLICE_MS) as Promise<number>);
      if (n <= 0 || this.#fd < 0 || signal.aborted) continue;
      const fd = c.accept4(this.#fd, null, null, SOCK_CLOEXEC);
      if (fd >= 0) return new FdChannel(c, fd);
      const e = errno(c);
      if (e === EINTR || e === EAGAIN) continue;
      if (e !== failed) {
        failed = e;
        const shortage = e === EMFILE || e === ENFILE || e === ENOBUFS || e === ENOMEM;
        onError?.(
          `Cannot accept on control socket "${this.path}": ${describeErrno(c, e)}` +
            (shortage ? " (retrying)" : ""),
        );
      }
      await pause(SLICE_MS, signal);
    }
  }

  /** Removes the file at `path` if it is still this listener's (a successor may have put its own there). */
  unlink(): void {
    if (this.#ino === null) return;
    try {
      if (Deno.statSync(this.path).ino === this.#ino) Deno.removeSync(this.path);
    } catch { /* gone already */ }
    this.#ino = null;
  }

  close(): void {
    this.unlink();
    if (this.#fd < 0) return;
    this.#c.close(this.#fd);
    this.#fd = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The name the socket is bound at before it is renamed to `path`, in the same directory (rename needs that) and
 * within the kernel's 107 bytes for every `path` that fits: `PATH.PID.new` when that fits, else `DIR/.PID` with the
 * pid in base 36 (at most 5 characters; `DIR/` plus at least one character is already in `path`, so it is at most 5
 * bytes longer than `path`: a 100-byte path, the config's limit, gives at most 105).
 */
function besideName(path: string): string {
  const long = `${path}.${Deno.pid}.new`;
  if (encoder.encode(long).length < SOCKADDR_UN_SIZE - 2) return long;
  const slash = path.lastIndexOf("/");
  return `${slash < 0 ? "" : path.slice(0, slash + 1)}.${Deno.pid.toString(36)}`;
}

/** Removes `path` when it is a socket nothing answers on; throws StartError when something does, or it is no socket. */
function removeIfStale(path: string): void {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch {
    return;
  }
  if (!info.isSocket) {
    throw new StartError(`Cannot use control socket "${path}": the file exists and is not a socket`);
  }
  try {
    connectControl(path).close();
  } catch (error) {
    if (error instanceof ChannelError && /nothing answers/.test(error.message)) {
      Deno.removeSync(path);
      return;
    }
    throw new StartError(`Cannot use control socket "${path}": ${(error as Error).message}`);
  }
  throw new StartError(
    `Cannot use control socket "${path}": a running process answers on it (start with --takeover ${path} to replace it)`,
  );
}

/** What a descriptor is, asked of the kernel (never trusting what a peer says it is). */
export interface SocketFacts {
  readonly kind: "tcp" | "udp" | "other";
  /** A TCP socket that is listening. */
  readonly listening: boolean;
  readonly addr: HostPort | null;
  readonly v6: boolean;
}

export function inspectSocket(fd: number): SocketFacts {
  const c = libcOrThrow();
  const slab = new Slab();
  const int = (option: number): number | null => {
    slab.view.setUint32(LEN + 8, 4, true);
    return c.getsockopt(
        fd,
        SOL_SOCKET,
        option,
        slab.bytes.subarray(LEN, LEN + 8),
        slab.bytes.subarray(LEN + 8),
      ) ===
        0
      ? slab.view.getInt32(LEN, true)
      : null;
  };
  const type = int(SO_TYPE);
  slab.view.setUint32(LEN + 8, SOCKADDR_SIZE, true);
  slab.bytes.fill(0, NAME, NAME + 32);
  const named = c.getsockname(fd, slab.name(), slab.bytes.subarray(LEN + 8)) === 0;
  const family = slab.view.getUint16(NAME, true);
  const ip = named && (family === AF_INET || family === AF_INET6);
  const kind = !ip ? "other" : type === SOCK_STREAM ? "tcp" : type === SOCK_DGRAM ? "udp" : "other";
  return {
    kind,
    listening: kind === "tcp" && int(SO_ACCEPTCONN) === 1,
    addr: ip ? readSockaddr(slab.view, NAME) : null,
    v6: family === AF_INET6,
  };
}

/** This process's effective uid: the only user a control socket talks to. */
export function effectiveUid(): number {
  return libcOrThrow().geteuid();
}

/** Closes a descriptor this process owns (one received and not adopted). */
export function closeFd(fd: number): void {
  libcOrThrow().close(fd);
}

/** A connected pair of unix stream sockets (tests of descriptor passing). */
export function channelPair(): [FdChannel, FdChannel] {
  const c = libcOrThrow();
  const slab = new Slab();
  if (c.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, slab.bytes.subarray(LEN, LEN + 8)) !== 0) {
    throw new ChannelError(`Cannot make a socket pair: ${describeErrno(c, errno(c))}`);
  }
  return [
    new FdChannel(c, slab.view.getInt32(LEN, true)),
    new FdChannel(c, slab.view.getInt32(LEN + 4, true)),
  ];
}
