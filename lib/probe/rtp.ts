/**
 * The probe's datagram as RTP (RFC 3550), so it passes `use_RTP` sessions and reflectors: a 12-byte RTP header
 * (version 2, no CSRC, no extension) followed by the probe header of lib/probe/packet.ts ("EDGP", 32-bit sequence,
 * stream id, send time), then padding to the chosen size. The receiver measures loss and delay from the probe
 * header exactly as for plain datagrams; anything that reads RTP sees an ordinary stream.
 *
 * Timing. The RTP timestamp follows the capture time at the clock rate:
 *   timestamp = base + round((captureUs - startCaptureUs) * clockRate / 1e6)  (mod 2^32)
 * and sender reports map NTP = capture time to the timestamp of that same instant, so a receiver's NTP <-> RTP
 * mapping gives every packet's capture time. Capture time is send time minus `captureDelayUs`: with a delay the
 * stream looks exactly like one from a camera that delivers its packets that much after capturing them (what the
 * seed report's HDV camera does with its 1 s), without a delay line: arrival times are the real ones, only the
 * capture times the sender reports move. Pure: times come in as arguments.
 */
import { parseRtp, type RtpHeader, writeRtpHeader } from "../media/rtp.ts";
import { writeSenderReport } from "../media/rtcp.ts";
import { PROBE_HEADER, type ProbeHeader, readProbe, writeProbe } from "./packet.ts";

export const RTP_HEADER = 12;
/** The smallest RTP probe datagram: RTP header + probe header. */
export const RTP_PROBE_MIN = RTP_HEADER + PROBE_HEADER;

export interface RtpProbeConfig {
  readonly payloadType: number;
  readonly ssrc: number;
  readonly clockRate: number;
  /** The probe's stream id (in the probe header). */
  readonly stream: number;
  readonly cname: string;
  /** How long before sending each packet was "captured" (µs, >= 0). */
  readonly captureDelayUs: number;
  /** The first RTP sequence number and timestamp (random in RFC 3550; fixed in tests). */
  readonly sequenceBase: number;
  readonly timestampBase: number;
  /** Send time of the first packet (µs since the epoch): the timestamp base belongs to its capture time. */
  readonly startUs: number;
}

/** Writes RTP probe datagrams and the sender reports that go with them. */
export class RtpProbeWriter {
  #packets = 0;
  #octets = 0;

  constructor(readonly config: RtpProbeConfig) {}

  /** The RTP timestamp of a packet captured at `captureUs`. */
  timestampAt(captureUs: number): number {
    const c = this.config;
    const ticks = Math.round(((captureUs - (c.startUs - c.captureDelayUs)) * c.clockRate) / 1e6);
    // Modulo 2^32 for any integer, also a negative one (a capture time before the start).
    return (((c.timestampBase + ticks) % 2 ** 32) + 2 ** 32) % 2 ** 32;
  }

  /**
   * Fills `buf` (its whole length is the datagram) with probe packet `seq` (32-bit) sent at `sentUs`. The marker
   * bit is never set: every datagram stands alone.
   */
  write(buf: Uint8Array, seq: number, sentUs: number): void {
    const c = this.config;
    writeRtpHeader(buf, 0, {
      marker: false,
      payloadType: c.payloadType,
      sequence: (c.sequenceBase + seq) & 0xffff,
      timestamp: this.timestampAt(sentUs - c.captureDelayUs),
      ssrc: c.ssrc,
    });
    writeProbe(buf.subarray(RTP_HEADER), seq, c.stream, sentUs);
    this.#packets++;
    this.#octets += buf.length - RTP_HEADER;
  }

  /** The RTCP compound (SR + SDES CNAME) to send at `nowUs`, counting the packets written so far. */
  senderReport(nowUs: number): Uint8Array {
    const c = this.config;
    const captureUs = nowUs - c.captureDelayUs;
    return writeSenderReport({
      ssrc: c.ssrc,
      ntpUs: captureUs,
      rtpTimestamp: this.timestampAt(captureUs),
      packets: this.#packets,
      octets: this.#octets,
      cname: c.cname,
    });
  }
}

export interface RtpProbeDatagram {
  readonly rtp: RtpHeader;
  /** The probe header in the payload, or null for RTP from something else (ffmpeg, a camera). */
  readonly probe: ProbeHeader | null;
}

/** Reads an RTP datagram and the probe header inside it; null when `d` is not RTP. */
export function readRtpProbe(d: Uint8Array): RtpProbeDatagram | null {
  const rtp = parseRtp(d);
  if (!rtp) return null;
  const probe = rtp.payloadLength >= PROBE_HEADER
    ? readProbe(d.subarray(rtp.headerLength, rtp.headerLength + rtp.payloadLength))
    : null;
  return { rtp, probe };
}
