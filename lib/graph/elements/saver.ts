/**
 * `localservice.saver`: records every datagram with its arrival time in a pcap file (synthetic IP/UDP headers, so
 * tshark and Wireshark open it and the player replays it at its pacing).
 *
 * The packet path only copies records into a chunk; full chunks (and the one under way, at least once a second, so
 * a crash loses at most the last second) go to a bounded queue that an asynchronous writer empties, so a slow disk
 * never holds up the event loop that carries packets. When the queue is full, records are dropped and counted
 * (`dropped_queue`). A chunk holds whole records only. When a write fails (a full disk: ENOSPC) the file is cut back
 * to its last whole record, so it stays a readable capture, and the saver stops recording and says why in its
 * status (`state: "stopped"`, `stopped_reason`); later datagrams count as `dropped`.
 *
 * The file is created 0640 and opened without following a symbolic link (files.ts).
 */
import { StartError } from "../../core/errors.ts";
import type { TimerId } from "../../core/clock.ts";
import {
  PCAP_MAX_RECORD_SIZE,
  pcapFileHeader,
  pcapNeedsIPv6,
  pcapRecordSize,
  writePcapRecord,
} from "../../media/pcap.ts";
import type { Endpoint } from "../../net/udp.ts";
import { defineElement } from "../element.ts";
import { boolParam, fileNameParam, numberParam } from "../params.ts";
import { dataPath, describeFsError, FILE_MODE, openNoFollow } from "./files.ts";

export const CHUNK_BYTES = 256 * 1024 + PCAP_MAX_RECORD_SIZE;
/**
 * Chunks waiting for the writer: with the one being filled, at most about 64 MiB per saver, made only as a burst
 * needs them. The writer's turns come between the packet path's batches, and a write can take a while (the page
 * cache's writeback): measured in the session bench at 464 Mb/s per saver, 16 chunks (4 MiB, 70 ms) overflowed
 * and lost 17-42% of the records, 256 lost none.
 */
export const MAX_QUEUED_CHUNKS = 256;
/** Empty chunks kept for reuse after a burst; the rest go back to the collector. */
const KEEP_FREE_CHUNKS = 8;
/**
 * Chunks all the savers of a node may hold at once (about 250 MiB): one upload of many savers (a duplicator may feed
 * 200 of them) cannot make the node hold more memory, however slow its disk. Beyond it records are dropped and
 * counted as `dropped_queue`.
 */
export const NODE_SAVER_CHUNKS = 800;
/** Where the node-wide count lives in `NodeServices.shared`. */
const BUDGET_KEY = "localservice.saver.chunks";

/** The chunks a node's savers hold, against NODE_SAVER_CHUNKS. */
export class ChunkBudget {
  used = 0;
  constructor(readonly max = NODE_SAVER_CHUNKS) {}
  take(): boolean {
    if (this.used >= this.max) return false;
    this.used++;
    return true;
  }
  give(n = 1): void {
    this.used = Math.max(0, this.used - n);
  }
}
const FLUSH_MS = 1000;
/** A pcap record header: ts_sec, ts_usec, incl_len, orig_len. */
const RECORD_HEADER_SIZE = 16;

/** What the saver needs of an open file; tests give one whose disk fills up. */
export interface SaverFile {
  write(data: Uint8Array): Promise<number>;
  truncate(length: number): Promise<void>;
  close(): void;
}

export interface SaverIo {
  open(path: string, options: Deno.OpenOptions): Promise<SaverFile>;
}

const denoIo: SaverIo = { open: openNoFollow };

interface Chunk {
  readonly bytes: Uint8Array;
  fill: number;
  /** Where its first record starts (after the file header in the first chunk). */
  start: number;
}

/** The saver kind, writing through `io` (the real file system unless a test says otherwise). */
export function saverKind(io: SaverIo = denoIo) {
  return defineElement({
    name: "localservice.saver",
    description: "Records every datagram with its arrival time in a pcap file in the data directory",
    needs: { files: "write" },
    ports: { inputs: { min: 1, max: 1 }, outputs: { min: 0, max: 0 } },
    params: {
      output_file: fileNameParam("the file to write, in the node's data directory"),
      overwrite: boolParam("replace the file when it exists (otherwise the session does not start)", false),
      max_bytes: numberParam("stop recording (and count drops) beyond this size", {
        min: 4096,
        max: 2 ** 50,
        default: 1024 ** 3,
        integer: true,
      }),
      port: numberParam("UDP destination port written in the synthetic headers (RTCP: port + 1)", {
        min: 1,
        max: 65534,
        default: 5004,
        integer: true,
      }),
    },
    claims: (p) => [`file ${p.output_file}`],
    diskBytes: (p) => p.max_bytes,
    create({ params, node }) {
      const path = dataPath(node.dataDir, params.output_file);
      const host = node.host === "0.0.0.0" || node.host === "::" ? "127.0.0.1" : node.host;
      const to: Endpoint = { host, port: params.port };
      const toRtcp: Endpoint = { host, port: params.port + 1 };
      const tally = {
        state: "starting" as "starting" | "recording" | "stopped",
        stopped_reason: null as string | null,
        records: 0,
        bytes: 0,
        written_bytes: 0,
        dropped: 0,
        dropped_queue: 0,
        write_errors: 0,
      };
      const free: Chunk[] = [];
      const queue: Chunk[] = [];
      let chunks = 0;
      let queuedPeak = 0;
      let budget = node.shared?.get(BUDGET_KEY) as ChunkBudget | undefined;
      if (!budget) {
        budget = new ChunkBudget();
        node.shared?.set(BUDGET_KEY, budget);
      }
      const shared = budget;
      let current: Chunk | null = null;
      let file: SaverFile | null = null;
      let timer: TimerId | undefined;
      let writing: Promise<void> | null = null;

      const take = (): Chunk | null => {
        const c = free.pop() ??
          (chunks < MAX_QUEUED_CHUNKS + 1 && shared.take()
            ? (chunks++, { bytes: new Uint8Array(CHUNK_BYTES), fill: 0, start: 0 })
            : null);
        if (c) [c.fill, c.start] = [0, 0];
        return c;
      };
      /** The chunk under way goes to the writer (when it holds anything). */
      const seal = () => {
        if (!current || current.fill === 0) return;
        queue.push(current);
        if (queue.length > queuedPeak) queuedPeak = queue.length;
        current = null;
        kick();
      };
      const kick = () => {
        if (writing) return;
        writing = drain().finally(() => {
          writing = null;
          // A chunk sealed while the writer was finishing has had no writer yet.
          if (queue.length && file && tally.state !== "stopped") kick();
        });
      };
      const drain = async () => {
        while (queue.length && file && tally.state !== "stopped") {
          const chunk = queue[0];
          let off = 0;
          try {
            while (off < chunk.fill) off += await file.write(chunk.bytes.subarray(off, chunk.fill));
          } catch (error) {
            await fail(chunk, off, error);
            return;
          }
          tally.written_bytes += chunk.fill;
          queue.shift();
          if (free.length < KEEP_FREE_CHUNKS) free.push(chunk);
          else {
            chunks--;
            shared.give();
          }
        }
      };
      /** A write failed `written` bytes into `chunk`: cut the file back to its last whole record and stop. */
      const fail = async (chunk: Chunk, written: number, error: unknown) => {
        tally.write_errors++;
        tally.state = "stopped";
        const whole = lastWholeRecord(chunk, written);
        tally.written_bytes += whole;
        tally.stopped_reason = `Cannot write ${path}: ${
          describeFsError(error)
        }; the file was cut back to ${tally.written_bytes} bytes (its last whole record) and recording stopped`;
        try {
          if (tally.written_bytes > 0) await file!.truncate(tally.written_bytes);
          else {
            // Not even the pcap header fit: an empty file would be no capture at all, so there is none.
            await Deno.remove(path);
            tally.stopped_reason = `Cannot write ${path}: ${
              describeFsError(error)
            }; not even the capture's header fit, so the file was removed and recording stopped`;
          }
        } catch (cut) {
          tally.stopped_reason += ` (cutting back failed too: ${describeFsError(cut)})`;
        }
        // What was queued will never be written: counted as dropped, like what still comes.
        queue.shift();
        let lost = countRecords(chunk, whole, chunk.fill);
        for (const c of queue) lost += countRecords(c, 0, c.fill);
        if (current) lost += countRecords(current, 0, current.fill);
        tally.records -= lost;
        tally.dropped += lost;
        tally.bytes = tally.written_bytes;
        free.push(chunk, ...queue);
        queue.length = 0;
        current = null;
        node.logger.error("saver stopped", {
          file: path,
          error: describeFsError(error),
          kept: tally.written_bytes,
        });
      };
      const tick = () => {
        seal();
        timer = node.clock.setTimeout(tick, FLUSH_MS);
      };

      return {
        async start() {
          try {
            await Deno.mkdir(node.dataDir, { recursive: true });
          } catch (error) {
            throw new StartError(
              `Cannot create the data directory ${node.dataDir}: ${describeFsError(error)}`,
            );
          }
          try {
            file = await io.open(path, {
              write: true,
              create: true,
              truncate: params.overwrite,
              createNew: !params.overwrite,
              mode: FILE_MODE,
            });
          } catch (error) {
            throw new StartError(`Cannot write ${path}: ${describeFsError(error)}`);
          }
          current = take()!;
          const header = pcapFileHeader();
          current.bytes.set(header);
          current.fill = current.start = header.length;
          tally.bytes = header.length;
          tally.state = "recording";
          seal();
          timer = node.clock.setTimeout(tick, FLUSH_MS);
        },
        push(_input, batch, rtcp) {
          if (tally.state !== "recording") {
            tally.dropped += batch.count;
            return;
          }
          const at = node.clock.nowUs();
          const dst = rtcp ? toRtcp : to;
          for (let i = 0; i < batch.count; i++) {
            const from = batch.from(i);
            const size = pcapRecordSize(batch.length(i), pcapNeedsIPv6(from, dst));
            if (tally.bytes + size > params.max_bytes) {
              tally.dropped++;
              continue;
            }
            if (current && current.fill + size > current.bytes.length) seal();
            current ??= take();
            if (!current) {
              tally.dropped_queue++;
              continue;
            }
            current.fill = writePcapRecord(current.bytes, current.fill, {
              timeUs: at,
              from,
              to: dst,
              data: batch.data(i),
            });
            tally.records++;
            tally.bytes += size;
          }
        },
        async stop() {
          if (timer !== undefined) node.clock.clearTimeout(timer);
          seal();
          while (writing) await writing;
          file?.close();
          file = null;
          if (tally.state === "recording") tally.state = "stopped";
          // Its chunks go back to the node's count (and to the collector).
          shared.give(chunks);
          chunks = 0;
          free.length = 0;
        },
        status: () => ({ file: path, ...tally, queued_chunks: queue.length, queued_peak: queuedPeak }),
      };
    },
  });
}

export const saver = saverKind();

/** How many bytes of `chunk` up to `written` are whole records (its header included). */
function lastWholeRecord(chunk: Chunk, written: number): number {
  if (written < chunk.start) return 0;
  let off = chunk.start;
  while (off + RECORD_HEADER_SIZE <= written) {
    const end = off + RECORD_HEADER_SIZE + readU32le(chunk.bytes, off + 8);
    if (end > written) break;
    off = end;
  }
  return off;
}

function countRecords(chunk: Chunk, from: number, to: number): number {
  let n = 0;
  for (let off = Math.max(from, chunk.start); off + RECORD_HEADER_SIZE <= to; n++) {
    off += RECORD_HEADER_SIZE + readU32le(chunk.bytes, off + 8);
  }
  return n;
}

function readU32le(b: Uint8Array, off: number): number {
  return (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)) >>> 0;
}
