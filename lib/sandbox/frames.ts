/**
 * The byte stream between a sandbox host and its child (a unix socket of the run's own): frames of a u32
 * little-endian length, then a kind byte and a body of that length minus one. Control messages are UTF-8 JSON;
 * batches carry a small fixed header and then a crossing buffer of lib/graph/vm/codec.ts, so the datagrams are
 * copied once into the frame on each side and never one by one through JSON.
 *
 *     CONTROL    u8 1, JSON text
 *     BATCH_IN   u8 2, f64 host time (ms), u32 sequence, u16 input, codec buffer      (host -> child)
 *     BATCH_OUT  u8 3, u32 sequence, u16 output, codec buffer                          (child -> host)
 *     DONE       u8 4, u32 sequence, f64 handler time (ms), u32 datagrams it failed on (child -> host)
 *     REF        u8 5, u32 offset, u32 length                                          (both ways)
 *
 * A REF frame stands for the frames that fill `length` bytes at `offset` of the memory the two share
 * (lib/sandbox/shared_ring.ts), each with its own length and kind: a BATCH_IN the host encoded there, or the
 * BATCH_OUTs the child turned where their BATCH_INs lay (several, one after another, for a merged call). Only the
 * REF's few bytes then cross the socket.
 * The reader is a pure state machine (bytes in, frames out) and refuses a frame longer than its limit: what the
 * child writes is data from code the node does not trust.
 */

export const CONTROL = 1;
export const BATCH_IN = 2;
export const BATCH_OUT = 3;
export const DONE = 4;
export const REF = 5;

/** The longest frame either side accepts. */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class FrameError extends Error {
  override name = "FrameError";
}

export interface Frame {
  readonly kind: number;
  /** The body, a view valid until the next call to the reader. */
  readonly body: Uint8Array;
}

/** A CONTROL frame carrying `message` as JSON. */
export function controlFrame(message: unknown): Uint8Array {
  const text = encoder.encode(JSON.stringify(message));
  const frame = new Uint8Array(5 + text.length);
  new DataView(frame.buffer).setUint32(0, 1 + text.length, true);
  frame[4] = CONTROL;
  frame.set(text, 5);
  return frame;
}

export function readControl(body: Uint8Array): unknown {
  return JSON.parse(decoder.decode(body));
}

/** Bytes an encodeBatch buffer leaves free for sealBatchIn's header (its `prefix`). */
export const BATCH_IN_PREFIX = 19;
/** Bytes an encodeBatch buffer leaves free for sealBatchOut's header. */
export const BATCH_OUT_PREFIX = 11;

/**
 * Makes a BATCH_IN frame of a codec buffer encoded with BATCH_IN_PREFIX free bytes, in place (no copy): `frame` is
 * the whole of it, an ArrayBuffer or a view (encodeBatchInto's).
 */
export function sealBatchIn(
  frame: ArrayBuffer | Uint8Array,
  now: number,
  seq: number,
  input: number,
): Uint8Array {
  const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
  const view = new DataView(bytes.buffer, bytes.byteOffset, BATCH_IN_PREFIX);
  view.setUint32(0, bytes.length - 4, true);
  view.setUint8(4, BATCH_IN);
  view.setFloat64(5, now, true);
  view.setUint32(13, seq, true);
  view.setUint16(17, input, true);
  return bytes;
}

/** Makes a BATCH_OUT frame of a codec buffer encoded with BATCH_OUT_PREFIX free bytes, in place (no copy). */
export function sealBatchOut(buffer: ArrayBuffer, seq: number, output: number): Uint8Array {
  const view = new DataView(buffer);
  view.setUint32(0, buffer.byteLength - 4, true);
  view.setUint8(4, BATCH_OUT);
  view.setUint32(5, seq, true);
  view.setUint16(9, output, true);
  return new Uint8Array(buffer);
}

/** A BATCH_IN frame: `batch` is a codec buffer. */
export function batchInFrame(now: number, seq: number, input: number, batch: ArrayBuffer): Uint8Array {
  const frame = new Uint8Array(4 + 1 + 14 + batch.byteLength);
  const view = new DataView(frame.buffer);
  view.setUint32(0, 1 + 14 + batch.byteLength, true);
  frame[4] = BATCH_IN;
  view.setFloat64(5, now, true);
  view.setUint32(13, seq, true);
  view.setUint16(17, input, true);
  frame.set(new Uint8Array(batch), 19);
  return frame;
}

/**
 * A BATCH_IN frame's header, and where its codec buffer lies in `body.buffer` (no copy: valid as `body` is).
 */
export function peekBatchIn(
  body: Uint8Array,
): { now: number; seq: number; input: number; at: number; length: number } {
  if (body.length < 14) throw new FrameError(`Cannot read a batch frame: ${body.length} bytes`);
  const view = new DataView(body.buffer, body.byteOffset, body.length);
  return {
    now: view.getFloat64(0, true),
    seq: view.getUint32(8, true),
    input: view.getUint16(12, true),
    at: body.byteOffset + 14,
    length: body.length - 14,
  };
}

/**
 * Turns a BATCH_IN frame whose body is `body` into a BATCH_OUT frame of the same codec bytes, in place (its header
 * is written over the end of the BATCH_IN header, which is read by then): a batch answered unchanged goes back
 * without a copy. The caller has rewritten the codec header (restampBatch).
 */
export function turnBatchIn(body: Uint8Array, seq: number, output: number): Uint8Array {
  const codec = body.length - 14;
  const start = body.byteOffset + 14 - BATCH_OUT_PREFIX;
  const view = new DataView(body.buffer, start, BATCH_OUT_PREFIX);
  view.setUint32(0, BATCH_OUT_PREFIX - 4 + codec, true);
  view.setUint8(4, BATCH_OUT);
  view.setUint32(5, seq, true);
  view.setUint16(9, output, true);
  return new Uint8Array(body.buffer, start, BATCH_OUT_PREFIX + codec);
}

/** A BATCH_OUT frame: `batch` is a codec buffer. */
export function batchOutFrame(seq: number, output: number, batch: ArrayBuffer): Uint8Array {
  const frame = new Uint8Array(4 + 1 + 6 + batch.byteLength);
  const view = new DataView(frame.buffer);
  view.setUint32(0, 1 + 6 + batch.byteLength, true);
  frame[4] = BATCH_OUT;
  view.setUint32(5, seq, true);
  view.setUint16(9, output, true);
  frame.set(new Uint8Array(batch), 11);
  return frame;
}

export function readBatchOut(body: Uint8Array): { seq: number; output: number; batch: ArrayBuffer } {
  const out = peekBatchOut(body);
  return { seq: out.seq, output: out.output, batch: body.slice(6).buffer };
}

/** A BATCH_OUT frame's header, and where its codec buffer lies in `body.buffer` (no copy: valid as `body` is). */
export function peekBatchOut(body: Uint8Array): { seq: number; output: number; at: number; length: number } {
  if (body.length < 6) throw new FrameError(`Cannot read an output frame: ${body.length} bytes`);
  const view = new DataView(body.buffer, body.byteOffset, body.length);
  return {
    seq: view.getUint32(0, true),
    output: view.getUint16(4, true),
    at: body.byteOffset + 6,
    length: body.length - 6,
  };
}

export function doneFrame(seq: number, ms: number, failed: number): Uint8Array {
  const frame = new Uint8Array(4 + 1 + 16);
  const view = new DataView(frame.buffer);
  view.setUint32(0, 17, true);
  frame[4] = DONE;
  view.setUint32(5, seq, true);
  view.setFloat64(9, ms, true);
  view.setUint32(17, failed, true);
  return frame;
}

export function readDone(body: Uint8Array): { seq: number; ms: number; failed: number } {
  if (body.length !== 16) throw new FrameError(`Cannot read a done frame: ${body.length} bytes`);
  const view = new DataView(body.buffer, body.byteOffset, body.length);
  return { seq: view.getUint32(0, true), ms: view.getFloat64(4, true), failed: view.getUint32(12, true) };
}

/** A REF frame: the frame of `length` bytes at `offset` of the shared memory. */
export function refFrame(offset: number, length: number): Uint8Array {
  const frame = new Uint8Array(4 + 1 + 8);
  const view = new DataView(frame.buffer);
  view.setUint32(0, 9, true);
  frame[4] = REF;
  view.setUint32(5, offset, true);
  view.setUint32(9, length, true);
  return frame;
}

/** Where the frames a REF body stands for lie in the shared memory. */
export function readRef(body: Uint8Array): { offset: number; length: number } {
  if (body.length !== 8) throw new FrameError(`Cannot read a ref frame: ${body.length} bytes`);
  const ref = new DataView(body.buffer, body.byteOffset, 8);
  return { offset: ref.getUint32(0, true), length: ref.getUint32(4, true) };
}

/** Throws FrameError unless `length` bytes at `offset` lie inside `size` bytes and can hold a frame. */
export function checkRef(ref: { offset: number; length: number }, size: number): void {
  if (ref.length < 5 || ref.offset + ref.length > size) {
    throw new FrameError(
      `Cannot read shared frames of ${ref.length} bytes at ${ref.offset} (${size} shared)`,
    );
  }
}

/**
 * Passes each frame that fills `region` (one, or several one after another: a child's batches turned together) to
 * `each`, its body a view of `region`. Throws FrameError when they do not fill it exactly or one is not of `kind`.
 * Every field is read once.
 */
export function framesIn(region: Uint8Array, kind: number, each: (frame: Frame) => void): void {
  const view = new DataView(region.buffer, region.byteOffset, region.length);
  const end = region.length;
  for (let at = 0; at < end;) {
    const stated = at + 5 <= end ? view.getUint32(at, true) : 0;
    const found = stated >= 1 && at + 4 + stated <= end ? region[at + 4] : -1;
    if (found !== kind) {
      throw new FrameError(
        `Cannot read a shared frame at +${at} of ${end} bytes: kind ${found}, ${stated} bytes`,
      );
    }
    each({ kind, body: region.subarray(at + 5, at + 4 + stated) });
    at += 4 + stated;
  }
}

/** The frames a REF body stands for, read where they lie in `shared` (the child's side: the host is trusted). */
export function resolveRef(
  body: Uint8Array,
  shared: Uint8Array,
  kind: number,
  each: (frame: Frame) => void,
): void {
  const ref = readRef(body);
  checkRef(ref, shared.length);
  framesIn(shared.subarray(ref.offset, ref.offset + ref.length), kind, each);
}

const EMPTY = new Uint8Array(0);
const READ_ROOM = 256 * 1024;

/** Cuts a byte stream into frames; holds at most one frame's bytes plus one chunk. */
export class FrameReader {
  #buf = new Uint8Array(256 * 1024);
  #start = 0;
  #end = 0;

  constructor(private readonly maxFrame = MAX_FRAME_BYTES) {}

  /** Takes `chunk` and calls `each` for every whole frame; throws FrameError on a frame over the limit. */
  push(chunk: Uint8Array, each: (frame: Frame) => void): void {
    this.#append(chunk);
    for (;;) {
      const have = this.#end - this.#start;
      if (have < 4) break;
      const view = new DataView(this.#buf.buffer, this.#start, 4);
      const length = view.getUint32(0, true);
      if (length < 1 || length > this.maxFrame) {
        throw new FrameError(`Cannot read a frame of ${length} bytes (limit ${this.maxFrame})`);
      }
      if (have < 4 + length) break;
      const at = this.#start + 4;
      this.#start += 4 + length;
      each({ kind: this.#buf[at], body: this.#buf.subarray(at + 1, at + length) });
    }
    if (this.#start === this.#end) this.#start = this.#end = 0;
  }

  /**
   * Reads from `source` straight into this reader's buffer (no chunk allocated per read) and calls `each` for every
   * whole frame, until the source ends (resolves) or fails (rejects). Each read takes what is there, up to the free
   * room (at least 256 KiB), so a busy stream is read in few large reads. `after`, when given, is awaited after the
   * frames of each read and before the next read (frames' bodies are still valid during it).
   */
  async readFrom(
    source: { read(p: Uint8Array): Promise<number | null> },
    each: (frame: Frame) => void,
    after?: () => Promise<void>,
  ): Promise<void> {
    for (;;) {
      this.#room(READ_ROOM);
      const n = await source.read(this.#buf.subarray(this.#end));
      if (n === null) return;
      this.#end += n;
      this.push(EMPTY, each);
      if (after) await after();
      // A large frame grew the buffer: once it is empty again, back to the usual size.
      if (this.#start === this.#end && this.#buf.length > 4 * READ_ROOM) {
        this.#buf = new Uint8Array(4 * READ_ROOM);
      }
    }
  }

  /** At least `bytes` free after the end: moves what is held to the front, or grows. */
  #room(bytes: number): void {
    if (this.#buf.length - this.#end >= bytes) return;
    const have = this.#end - this.#start;
    // Four times the room: a move of what is held (a frame's first part) happens once in several reads.
    const want = Math.max(have + bytes, 4 * bytes);
    const next = want > this.#buf.length ? new Uint8Array(Math.max(want, this.#buf.length * 2)) : this.#buf;
    if (next === this.#buf) this.#buf.copyWithin(0, this.#start, this.#end);
    else next.set(this.#buf.subarray(this.#start, this.#end), 0);
    this.#buf = next;
    this.#start = 0;
    this.#end = have;
  }

  #append(chunk: Uint8Array): void {
    if (this.#end + chunk.length > this.#buf.length) {
      const have = this.#end - this.#start;
      const need = have + chunk.length;
      const next = need > this.#buf.length ? new Uint8Array(Math.max(need, this.#buf.length * 2)) : this.#buf;
      next.set(this.#buf.subarray(this.#start, this.#end), 0);
      this.#buf = next;
      this.#start = 0;
      this.#end = have;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }
}
