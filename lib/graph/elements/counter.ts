/**
 * `localservice.counter`: an analyser. Counts datagrams and bytes and, for RTP, loss, reordering and duplicates by
 * sequence number; passes everything on when its output is wired.
 */
import { isRtp, rtpSequence } from "../../media/rtp.ts";
import { RtpSequenceStats } from "../../media/rtp_stats.ts";
import { defineElement } from "../element.ts";

export const counter = defineElement({
  name: "localservice.counter",
  description: "Counts datagrams, bytes and RTP loss/reordering by sequence number; passes them on if wired",
  ports: { inputs: { min: 1, max: 1 }, outputs: { min: 0, max: 1 } },
  params: {},
  create({ outputs }) {
    const rtp = new RtpSequenceStats();
    const tally = { packets: 0, bytes: 0, rtcp_packets: 0, non_rtp: 0 };
    const out = outputs[0];
    return {
      push(_input, batch, rtcp) {
        for (let i = 0; i < batch.count; i++) {
          tally.bytes += batch.length(i);
          if (rtcp) continue;
          const d = batch.data(i);
          if (isRtp(d)) rtp.add(rtpSequence(d));
          else tally.non_rtp++;
        }
        if (rtcp) tally.rtcp_packets += batch.count;
        else tally.packets += batch.count;
        out?.emit(batch, rtcp);
      },
      status: () => ({ counted: { ...tally, rtp: rtp.snapshot() } }),
    };
  },
});
