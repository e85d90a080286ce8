/**
 * `reflector`: the reflector of the relay role as an active program. Its data comes from the graph (`in`), its
 * participants join on `participant_registration(DIPRONN_INPUT(port))` with the join protocol of the README, and
 * `out(DIPRONN_OUTPUT)` stands for them: data leaves from the registration socket, as in the relay role.
 */
import { DENY_CLASSES, type DenyClass } from "../../relay/participants.ts";
import { Reflector } from "../../relay/reflector.ts";
import { openUdp, type UdpSocket } from "../../net/udp.ts";
import { defineElement } from "../element.ts";
import { numberParam, type Param, ParamProblem } from "../params.ts";

const allowParam: Param<DenyClass[]> = {
  doc: `address classes to accept as participants despite the deny list: ${DENY_CLASSES.join(", ")}`,
  default: [],
  parse(values) {
    const out: DenyClass[] = [];
    for (const v of values) {
      if (v.kind !== "name" || !(DENY_CLASSES as readonly string[]).includes(v.text)) {
        return new ParamProblem(`expected address classes from ${DENY_CLASSES.join(", ")}`);
      }
      out.push(v.text as DenyClass);
    }
    return out;
  },
};

export const reflectorElement = defineElement({
  name: "reflector",
  description: "Sends its input to every participant that joined on its registration port",
  needs: { net: true },
  ports: {
    inputs: { min: 1, max: 1 },
    outputs: { min: 1, max: 1 },
    registration: "participant_registration",
    participants: true,
  },
  params: {
    timeout: numberParam("seconds of silence after which a participant is dropped", {
      min: 1,
      max: 3600,
      default: 30,
    }),
    max_participants: numberParam("participants at most", {
      min: 1,
      max: 10_000,
      default: 100,
      integer: true,
    }),
    max_per_address: numberParam("participants from one IP address at most", {
      min: 1,
      max: 10_000,
      default: 4,
      integer: true,
    }),
    allow: allowParam,
  },
  create({ name, session, params, useRtp, registration, node }) {
    let reflector: Reflector | null = null;
    const opened: UdpSocket[] = [];
    return {
      start() {
        const open = (port: number) => {
          const s = openUdp({ host: node.host, port }, node.udp);
          opened.push(s);
          return s;
        };
        const reg = open(registration!);
        const regRtcp = useRtp ? open(registration! + 1) : undefined;
        reflector = new Reflector(
          {
            name: `${session}/${name}`,
            registration: reg.local,
            use_rtp: useRtp,
            timeout: params.timeout * 1000,
            max_participants: params.max_participants,
            max_per_address: params.max_per_address,
            allow: params.allow,
            participants: [],
          },
          { registration: reg, registrationRtcp: regRtcp },
          node,
        );
        node.logger.info("reflector listening", { session, ap: name, registration: registration ?? 0 });
        return Promise.resolve();
      },
      push(_input, batch, rtcp) {
        reflector?.reflect(batch, rtcp);
      },
      async stop() {
        if (reflector) await reflector.close();
        else for (const s of opened) await s.close();
      },
      status: () => (reflector ? { reflector: reflector.status() } : {}),
    };
  },
});
