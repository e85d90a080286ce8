/**
 * `localservice.forwarder`: every input to its one output. With several inputs it merges them, which is how the
 * report's own tests stood in for the transcoder and the syncers (footnote 5).
 */
import { defineElement } from "../element.ts";

export const forwarder = defineElement({
  name: "localservice.forwarder",
  description: "Passes datagrams from its inputs (merged) to its one output unchanged",
  ports: { inputs: { min: 1, max: 16 }, outputs: { min: 1, max: 1 } },
  params: {},
  create({ outputs }) {
    const [out] = outputs;
    return {
      push(_input, batch, rtcp) {
        out.emit(batch, rtcp);
      },
    };
  },
});
