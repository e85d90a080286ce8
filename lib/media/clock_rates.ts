/**
 * RTP timestamps count in the media clock of the payload type. The static types of RFC 3551 have fixed rates; the
 * dynamic ones (96..127) mean nothing without an SDP rtpmap or the program's own parameter, so they are never guessed:
 * an unknown rate must make the caller fall back to another sync method (and say so), not align at a wrong rate.
 */

/** RFC 3551 tables 4 and 5: static payload type -> clock rate in Hz (G722 is 8000 by the RFC's own erratum). */
export const STATIC_CLOCK_RATES: ReadonlyMap<number, number> = new Map([
  [0, 8000], // PCMU
  [3, 8000], // GSM
  [4, 8000], // G723
  [5, 8000], // DVI4
  [6, 16000], // DVI4
  [7, 8000], // LPC
  [8, 8000], // PCMA
  [9, 8000], // G722
  [10, 44100], // L16 stereo
  [11, 44100], // L16 mono
  [12, 8000], // QCELP
  [13, 8000], // CN
  [14, 90000], // MPA
  [15, 8000], // G728
  [16, 11025], // DVI4
  [17, 22050], // DVI4
  [18, 8000], // G729
  [25, 90000], // CelB
  [26, 90000], // JPEG
  [28, 90000], // nv
  [31, 90000], // H261
  [32, 90000], // MPV
  [33, 90000], // MP2T
  [34, 90000], // H263
]);

/**
 * The clock rate of payload type `pt`, or null when it is unknown. A rate in `learned` (from an SDP or the program)
 * wins, because a session description is free to remap even a static type; a learned rate that is not a positive
 * finite number is ignored.
 */
export function clockRateOf(pt: number, learned?: ReadonlyMap<number, number>): number | null {
  if (!Number.isInteger(pt) || pt < 0 || pt > 127) return null;
  const l = learned?.get(pt);
  if (l !== undefined && Number.isFinite(l) && l > 0) return l;
  return STATIC_CLOCK_RATES.get(pt) ?? null;
}
