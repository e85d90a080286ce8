/** `localservice.duplicator`: one input, every datagram to each of N outputs (the batch itself, no copy). */
import { defineElement } from "../element.ts";

export const duplicator = defineElement({
  name: "localservice.duplicator",
  description: "Sends every datagram of its one input to each of its outputs",
  ports: { inputs: { min: 1, max: 1 }, outputs: { min: 1, max: 64 }, fanout: true },
  params: {},
  create({ outputs }) {
    return {
      push(_input, batch, rtcp) {
        for (const out of outputs) out.emit(batch, rtcp);
      },
    };
  },
});
