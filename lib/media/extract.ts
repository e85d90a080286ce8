/**
 * RTP payloads back to an elementary stream that ffprobe and ffmpeg decode, e.g. from a saver's pcap: MPEG-4 Part 2
 * (RFC 3016: the payloads are the bitstream; the SDP's `config=` VOL header goes first, since an encoder with global
 * headers sends it only there), MPEG-1/2 video (RFC 2250: each payload starts with a 4-byte video-specific header, 8
 * with the MPEG-2 extension, which is dropped), H.264 (RFC 6184: single NAL units, STAP-A and FU-A, to an Annex B
 * byte stream, the SDP's sprop-parameter-sets first) and L16 (the payloads are big-endian samples). Packets are put
 * in sequence order (extended across wrap, duplicates dropped); a gap is counted, and an H.264 NAL unit that lost a
 * fragment is left out rather than written broken. Pure: bytes in, bytes out; malformed payloads are counted.
 */
import { type PcapRecord, readPcap } from "./pcap.ts";
import { parseRtp } from "./rtp.ts";
import { fmtpParameter, hexBytes } from "./sdp.ts";
import { Unwrapper } from "./unwrap.ts";

export type ExtractEncoding = "MP4V-ES" | "MPV" | "H264" | "L16";

export interface ExtractOptions {
  /** The rtpmap encoding of the stream. */
  readonly encoding: ExtractEncoding;
  /** Only packets of this payload type (default: the first RTP packet's). */
  readonly payloadType?: number;
  /** Only packets of this SSRC (default: the first RTP packet's). */
  readonly ssrc?: number;
  /** The SDP's fmtp for the payload type (config= for MP4V-ES, sprop-parameter-sets for H264). */
  readonly fmtp?: string;
}

export interface Extracted {
  readonly data: Uint8Array;
  /** What ffprobe's `-f` calls the result: m4v, mpegvideo, h264 or s16be. */
  readonly format: "m4v" | "mpegvideo" | "h264" | "s16be";
  readonly packets: number;
  /** Sequence numbers missing between the first and the last packet. */
  readonly lost: number;
  readonly duplicates: number;
  /** Payloads too short or of a kind the format does not have. */
  readonly malformed: number;
  /** Packets of another SSRC or payload type, and datagrams that are not RTP. */
  readonly skipped: number;
}

const START = new Uint8Array([0, 0, 0, 1]);
const FORMAT = { "MP4V-ES": "m4v", MPV: "mpegvideo", H264: "h264", L16: "s16be" } as const;

/** Extracts the stream of `datagrams` (RTP, in any order). */
export function extractRtp(datagrams: readonly Uint8Array[], o: ExtractOptions): Extracted {
  let ssrc = o.ssrc;
  let pt = o.payloadType;
  let skipped = 0;
  const seqs = new Unwrapper(16);
  const byIndex = new Map<number, { data: Uint8Array; offset: number; end: number }>();
  let duplicates = 0;
  for (const d of datagrams) {
    const h = parseRtp(d);
    if (!h) {
      skipped++;
      continue;
    }
    ssrc ??= h.ssrc;
    pt ??= h.payloadType;
    if (h.ssrc !== ssrc || h.payloadType !== pt) {
      skipped++;
      continue;
    }
    const index = seqs.unwrap(h.sequence);
    if (byIndex.has(index)) {
      duplicates++;
      continue;
    }
    byIndex.set(index, { data: d, offset: h.headerLength, end: h.headerLength + h.payloadLength });
  }
  const order = [...byIndex.keys()].sort((a, b) => a - b);
  const lost = order.length ? order.at(-1)! - order[0] + 1 - order.length : 0;
  const chunks: Uint8Array[] = [];
  let malformed = 0;
  const fmtp = o.fmtp ?? "";

  if (o.encoding === "MP4V-ES") {
    const config = hexBytes(fmtpParameter(fmtp, "config") ?? "");
    if (config?.length) chunks.push(config);
  } else if (o.encoding === "H264") {
    for (const ps of (fmtpParameter(fmtp, "sprop-parameter-sets") ?? "").split(",")) {
      const nal = base64Bytes(ps);
      if (nal?.length) chunks.push(START, nal);
    }
  }

  /** H.264: the NAL unit being put together from FU-A fragments; null when none or when one was lost. */
  let fu: Uint8Array[] | null = null;
  let prev: number | null = null;
  for (const index of order) {
    const { data, offset, end } = byIndex.get(index)!;
    const p = data.subarray(offset, end);
    const gap = prev !== null && index !== prev + 1;
    prev = index;
    switch (o.encoding) {
      case "MP4V-ES":
      case "L16":
        chunks.push(p);
        break;
      case "MPV": {
        // RFC 2250 3.4: T (0x04 of the first byte) says an MPEG-2 extension header of 4 more bytes follows.
        const skip = p.length >= 4 && p[0] & 0x04 ? 8 : 4;
        if (p.length <= skip) malformed++;
        else chunks.push(p.subarray(skip));
        break;
      }
      case "H264": {
        if (gap) fu = null;
        if (p.length < 1) {
          malformed++;
          break;
        }
        const type = p[0] & 0x1f;
        if (type >= 1 && type <= 23) {
          chunks.push(START, p);
        } else if (type === 24) {
          let off = 1;
          while (off + 2 <= p.length) {
            const size = (p[off] << 8) | p[off + 1];
            off += 2;
            if (size === 0 || off + size > p.length) {
              malformed++;
              break;
            }
            chunks.push(START, p.subarray(off, off + size));
            off += size;
          }
        } else if (type === 28) {
          if (p.length < 3) {
            malformed++;
            break;
          }
          const startBit = p[1] & 0x80;
          const endBit = p[1] & 0x40;
          if (startBit) fu = [START, new Uint8Array([(p[0] & 0xe0) | (p[1] & 0x1f)])];
          if (fu) fu.push(p.subarray(2));
          if (endBit && fu) {
            chunks.push(...fu);
            fu = null;
          }
        } else {
          malformed++;
        }
        break;
      }
    }
  }
  return {
    data: concat(chunks),
    format: FORMAT[o.encoding],
    packets: order.length,
    lost,
    duplicates,
    malformed,
    skipped,
  };
}

/** Extracts a stream from a pcap (a saver's file): the RTP datagrams to `port` when given, else all of them. */
export function extractPcap(pcap: Uint8Array, o: ExtractOptions & { port?: number }): Extracted {
  const records: PcapRecord[] = readPcap(pcap).records;
  const data = records.filter((r) => o.port === undefined || r.to.port === o.port).map((r) => r.data);
  return extractRtp(data, o);
}

function concat(chunks: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const c of chunks) n += c.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

function base64Bytes(text: string): Uint8Array | null {
  const t = text.trim();
  if (!t || !/^[A-Za-z0-9+/]+={0,2}$/.test(t)) return null;
  try {
    return Uint8Array.from(atob(t), (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}
