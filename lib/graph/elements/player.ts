/**
 * `localservice.player`: replays a pcap file from the data directory (a saver's, or any capture of UDP) to its
 * output at the pacing it was recorded with, optionally faster or slower and in a loop — the report's player. The
 * file is read in chunks as it plays, so a recording of gigabytes needs no more memory than a few chunks. With
 * use_RTP, RTCP datagrams in the file go out on the RTCP flow. The file is opened without following a symbolic link.
 */
import { StartError } from "../../core/errors.ts";
import { isRtcp } from "../../media/rtp.ts";
import { PcapFormatError, PcapReader, type PcapRecord } from "../../media/pcap.ts";
import { ArrayBatch } from "../batch.ts";
import { defineElement } from "../element.ts";
import { boolParam, fileNameParam, numberParam } from "../params.ts";
import { dataPath, describeFsError, openNoFollow } from "./files.ts";

const CHUNK = 256 * 1024;
/** Records closer together than this go out in one batch. */
const SLACK_MS = 1;
/** Long gaps are waited in steps (a timer cannot take more than 2^31 ms), so the player stays responsive. */
const MAX_WAIT_MS = 60_000;
/** The shortest time one pass of a loop takes. */
const MIN_PASS_MS = 10;

export const player = defineElement({
  name: "localservice.player",
  description: "Replays a recorded pcap file at its original pacing (speed, loop)",
  needs: { files: "read" },
  ports: { inputs: { min: 0, max: 0 }, outputs: { min: 1, max: 1 } },
  params: {
    input_file: fileNameParam("the file to play, in the node's data directory"),
    speed: numberParam("1 plays in real time, 2 twice as fast", { min: 0.01, max: 1000, default: 1 }),
    loop: boolParam("start again at the end", false),
  },
  create({ params, node, outputs, useRtp }) {
    const path = dataPath(node.dataDir, params.input_file);
    const [out] = outputs;
    const tally = { played: 0, loops: 0, skipped: 0, state: "starting" };
    const stopped = new AbortController();
    let file: Deno.FsFile | null = null;
    let running: Promise<void> = Promise.resolve();
    // Pacing follows the monotonic clock, in milliseconds with a fraction.
    const ms = () => node.clock.nowUs() / 1000;

    /** Resolves after `ms` on the node's clock, or at once when stopped. */
    const wait = (ms: number) =>
      new Promise<void>((resolve) => {
        if (stopped.signal.aborted) return resolve();
        const id = node.clock.setTimeout(done, ms);
        stopped.signal.addEventListener("abort", done, { once: true });
        function done() {
          node.clock.clearTimeout(id);
          stopped.signal.removeEventListener("abort", done);
          resolve();
        }
      });

    const play = async () => {
      const chunk = new Uint8Array(CHUNK);
      while (!stopped.signal.aborted) {
        await file!.seek(0, Deno.SeekMode.Start);
        const reader = new PcapReader();
        let queue: PcapRecord[] = [];
        let next = 0;
        let eof = false;
        let first: number | null = null;
        const t0 = ms();
        const playedBefore = tally.played;
        tally.state = "playing";
        while (!stopped.signal.aborted) {
          if (next >= queue.length && !eof) {
            const n = await file!.read(chunk);
            if (n === null) eof = true;
            else [queue, next] = [reader.push(chunk.subarray(0, n)), 0];
            continue;
          }
          if (next >= queue.length) break;
          first ??= queue[next].timeUs;
          const due = t0 + (queue[next].timeUs - first) / 1000 / params.speed;
          const wait_ms = due - ms();
          if (wait_ms > SLACK_MS) {
            await wait(Math.min(wait_ms, MAX_WAIT_MS));
            continue;
          }
          // Everything already due goes out together, RTP and RTCP apart.
          const now = ms();
          const media: PcapRecord[] = [];
          const rtcp: PcapRecord[] = [];
          while (
            next < queue.length && t0 + (queue[next].timeUs - first) / 1000 / params.speed <= now + SLACK_MS
          ) {
            const r = queue[next++];
            (useRtp && isRtcp(r.data) ? rtcp : media).push(r);
          }
          for (const [records, isRtcpFlow] of [[media, false], [rtcp, true]] as const) {
            if (!records.length) continue;
            out.emit(new ArrayBatch(records.map((r) => r.data), records.map((r) => r.from)), isRtcpFlow);
            tally.played += records.length;
          }
        }
        tally.skipped = reader.stats.skipped;
        // A file with nothing to play ends the player even in a loop; a pass shorter than MIN_PASS_MS (records all
        // at one time) waits out the rest, so a loop never turns into a flood.
        if (!params.loop || stopped.signal.aborted || tally.played === playedBefore) break;
        const rest = MIN_PASS_MS - (ms() - t0);
        if (rest > 0) await wait(rest);
        tally.loops++;
      }
      tally.state = stopped.signal.aborted ? "stopped" : "finished";
    };

    return {
      async start() {
        try {
          file = await openNoFollow(path, { read: true });
          const head = new Uint8Array(24);
          const n = (await file.read(head)) ?? 0;
          const check = new PcapReader();
          check.push(head.subarray(0, n));
          if (n < head.length || check.finish().truncated) {
            throw new PcapFormatError("Cannot read capture: the file is shorter than a pcap header", 0);
          }
        } catch (error) {
          file?.close();
          file = null;
          const why = error instanceof PcapFormatError ? error.message : describeFsError(error);
          throw new StartError(`Cannot play ${path}: ${why}`);
        }
        running = play().catch((error) => {
          tally.state = "failed";
          node.logger.error("player failed", { file: path, error: describeFsError(error) });
        });
      },
      push() {},
      async stop() {
        stopped.abort();
        await running;
        file?.close();
        file = null;
      },
      status: () => ({ file: path, ...tally }),
    };
  },
});
