/**
 * `localservice.saver`: records every datagram with its arrival time in a pcap file (synthetic IP/UDP headers, so
 * tshark and Wireshark open it and the player replays it at its pacing). Records collect in a buffer that is
 * written when it fills and at least once a second, so a crash of the process loses at most the last second.
 * Writes are synchronous: a 256 KiB write to the page cache takes microseconds, and it keeps the order and the
 * accounting simple; a disk that cannot keep up shows as `dropped` once the size limit is reached.
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
import { dataPath, describeFsError, isSymlink } from "./files.ts";

const BUFFER_BYTES = 256 * 1024 + PCAP_MAX_RECORD_SIZE;
const FLUSH_MS = 1000;

export const saver = defineElement({
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
    const buffer = new Uint8Array(BUFFER_BYTES);
    const host = node.host === "0.0.0.0" || node.host === "::" ? "127.0.0.1" : node.host;
    const to: Endpoint = { host, port: params.port };
    const toRtcp: Endpoint = { host, port: params.port + 1 };
    const tally = { records: 0, bytes: 0, dropped: 0, write_errors: 0 };
    let file: Deno.FsFile | null = null;
    let fill = 0;
    let timer: TimerId | undefined;

    const flush = () => {
      if (!file || fill === 0) return;
      try {
        let off = 0;
        while (off < fill) off += file.writeSync(buffer.subarray(off, fill));
      } catch (error) {
        tally.write_errors++;
        node.logger.error("saver cannot write", { file: path, error: describeFsError(error) });
      }
      fill = 0;
    };
    const tick = () => {
      flush();
      timer = node.clock.setTimeout(tick, FLUSH_MS);
    };

    return {
      async start() {
        try {
          await Deno.mkdir(node.dataDir, { recursive: true });
        } catch (error) {
          throw new StartError(`Cannot create the data directory ${node.dataDir}: ${describeFsError(error)}`);
        }
        if (isSymlink(path)) throw new StartError(`Cannot write ${path}: it is a symbolic link`);
        try {
          file = await Deno.open(path, {
            write: true,
            create: true,
            truncate: params.overwrite,
            createNew: !params.overwrite,
          });
        } catch (error) {
          throw new StartError(`Cannot write ${path}: ${describeFsError(error)}`);
        }
        const header = pcapFileHeader();
        buffer.set(header);
        fill = header.length;
        tally.bytes = header.length;
        flush();
        timer = node.clock.setTimeout(tick, FLUSH_MS);
      },
      push(_input, batch, rtcp) {
        const at = node.clock.nowUs();
        const dst = rtcp ? toRtcp : to;
        for (let i = 0; i < batch.count; i++) {
          const from = batch.from(i);
          const size = pcapRecordSize(batch.length(i), pcapNeedsIPv6(from, dst));
          if (tally.bytes + size > params.max_bytes) {
            tally.dropped++;
            continue;
          }
          if (fill + size > buffer.length) flush();
          fill = writePcapRecord(buffer, fill, { timeUs: at, from, to: dst, data: batch.data(i) });
          tally.records++;
          tally.bytes += size;
        }
      },
      stop() {
        if (timer !== undefined) node.clock.clearTimeout(timer);
        flush();
        file?.close();
        file = null;
        return Promise.resolve();
      },
      status: () => ({ file: path, ...tally }),
    };
  },
});
