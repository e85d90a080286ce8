/**
 * `reflector`: the reflector of the relay role as an active program. Its data comes from the graph (`in`), its
 * participants join on `participant_registration(DIPRONN_INPUT(port))` with the join protocol of the README, and
 * `out(DIPRONN_OUTPUT)` stands for them: data leaves from the registration socket, as in the relay role.
 *
 * In a VM group it is split (ElementKind.edge), since the main isolate keeps every socket. The main isolate's half
 * binds the registration ports on the node's UDP path (the fast one, with GSO sends), takes the data and sends it
 * to the participants; it hands what arrives on the registration ports to the worker's half, which keeps the
 * participant table (join, challenge, confirm, limits, deny list, timeouts) and answers with the replies to send
 * and the table as it now is. The main half checks that answer (data from the worker is not trusted) and shows
 * the reflector in /status and /metrics as a whole reflector shows itself, labelled with its session and VM.
 */
import { errorMessage, StartError } from "../../core/errors.ts";
import { isRtcp } from "../../media/rtp.ts";
import { isIPv4, isIPv6 } from "../../net/address.ts";
import { AllowListError, SourceAllowList } from "../../net/allow.ts";
import { type Batch, openUdp, type UdpSocket } from "../../net/udp.ts";
import { DENY_CLASSES, type DenyClass, ParticipantTable } from "../../relay/participants.ts";
import { checkMembershipReport, type MembershipReport, Reflector } from "../../relay/reflector.ts";
import type { TimerId } from "../../core/clock.ts";
import { defineElement, type EdgeLink, type Element, type ElementContext } from "../element.ts";
import { numberParam, type Param, ParamProblem } from "../params.ts";

/** Control messages posted to the worker's half and not yet answered, at most; more are dropped and counted. */
const CONTROL_IN_FLIGHT = 64;
/**
 * A control message unanswered this long is taken as lost (the worker dropped it before its half was ready, or
 * ended), so that lost messages cannot fill CONTROL_IN_FLIGHT for good and shut the join path.
 */
const CONTROL_ANSWER_MS = 2000;
/** The longest control datagram handed on (the protocol's longest message is 64 bytes and more). */
const CONTROL_MAX_BYTES = 256;

/** Main half -> worker half: control datagrams from a registration socket. */
interface ControlMessage {
  readonly rtcp: boolean;
  readonly datagrams: readonly { readonly host: string; readonly port: number; readonly data: Uint8Array }[];
}

/** Worker half -> main half: the replies to send, and the table as it now is. */
interface AnswerMessage {
  /** Whether this answers a ControlMessage (else the table changed by itself: a timeout). */
  readonly answer: boolean;
  readonly rtcp: boolean;
  readonly replies: readonly { readonly host: string; readonly port: number; readonly data: Uint8Array }[];
  /** Without `participants` when the list did not change since the last one sent. */
  readonly report: Omit<MembershipReport, "participants"> & Partial<Pick<MembershipReport, "participants">>;
}

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

/**
 * `allow_sources = "10.0.0.0/8", "2001:db8::/32"`: the senders whose datagrams the reflector sends on (those that
 * reach it through the graph keep their sender); by default any. node.allow_sources filters at DIPRONN_INPUT
 * already, for the whole node; this narrows one reflector further.
 */
const allowSourcesParam: Param<readonly string[]> = {
  doc:
    'source prefixes whose datagrams are reflected ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7"); default any',
  default: [],
  parse(values) {
    const out: string[] = [];
    for (const v of values) {
      if (v.kind !== "string") {
        return new ParamProblem(`expected quoted source prefixes such as "10.0.0.0/8"`);
      }
      out.push(v.text);
    }
    try {
      SourceAllowList.parse(out);
    } catch (error) {
      if (error instanceof AllowListError) return new ParamProblem(error.message);
      throw error;
    }
    return out;
  },
};

const params = {
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
  allow_sources: allowSourcesParam,
};
type Ctx = ElementContext<typeof params>;

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
  params,
  create: (ctx) => (ctx.edge ? tableHalf(ctx, ctx.edge) : socketSide(ctx, null)),
  edge: (ctx) => socketSide(ctx, ctx.edge),
});

/**
 * The reflector with its sockets: whole (`link` null: the table is here too), or the main isolate's half of a
 * reflector in a VM group, whose table is the worker's half at the other end of `link`.
 */
/** How often the worker's half sends its participant list when it did not change (for their last-seen times). */
const LIST_REFRESH_MS = 1000;

function socketSide(ctx: Ctx, link: EdgeLink | null): Element {
  const { name, session, params, useRtp, registration, node } = ctx;
  let reflector: Reflector | null = null;
  const opened: UdpSocket[] = [];
  /** When each unanswered control message was sent (ms): answers come back in order, oldest first. */
  const inFlight: number[] = [];
  let controlDropped = 0;
  let controlLost = 0;
  let badAnswers = 0;

  const control = (batch: Batch, rtcp: boolean) => {
    const now = node.clock.now();
    while (inFlight.length && now - inFlight[0] > CONTROL_ANSWER_MS) {
      inFlight.shift();
      controlLost++;
    }
    if (inFlight.length >= CONTROL_IN_FLIGHT) {
      controlDropped += batch.count;
      return;
    }
    const datagrams: ControlMessage["datagrams"][number][] = [];
    for (let i = 0; i < batch.count; i++) {
      const from = batch.from(i);
      // Copies: the batch's views are valid only during this call.
      datagrams.push({
        host: from.host,
        port: from.port,
        data: batch.data(i).slice(0, CONTROL_MAX_BYTES + 1),
      });
    }
    const message: ControlMessage = { rtcp, datagrams };
    if (link!.post(message)) inFlight.push(now);
    else controlDropped += batch.count;
  };

  /** The participants the worker's half last sent (an answer leaves them out when they did not change). */
  let lastParticipants: MembershipReport["participants"] = [];
  const answer = (value: unknown) => {
    const m = value as Partial<AnswerMessage> | null;
    if (m?.answer === true) inFlight.shift();
    if (!reflector) return; // the worker's half started first and said so: nothing to show yet
    const raw = m?.report as { participants?: unknown } | undefined;
    const unchanged = typeof raw === "object" && raw !== null && raw.participants === undefined;
    const checked = checkMembershipReport(unchanged ? { ...raw, participants: [] } : raw, {
      max: params.max_participants,
      allow: params.allow,
      ipv4Only: isIPv4(node.host),
    });
    const report = checked && unchanged ? { ...checked, participants: lastParticipants } : checked;
    if (report) lastParticipants = report.participants;
    if (!report || !Array.isArray(m?.replies)) {
      badAnswers++;
      return;
    }
    for (const r of m.replies.slice(0, CONTROL_MAX_BYTES) as unknown[]) {
      const { host, port, data } = (r ?? {}) as { host?: unknown; port?: unknown; data?: unknown };
      const ok = typeof host === "string" && (isIPv4(host) || isIPv6(host)) && typeof port === "number" &&
        Number.isInteger(port) && port > 0 && port < 65536 && data instanceof Uint8Array &&
        data.length <= CONTROL_MAX_BYTES;
      if (ok) reflector.reply(data, { host, port }, m.rtcp === true);
      else badAnswers++;
    }
    reflector.mirror(report);
  };
  if (link) link.onMessage = answer;

  return {
    start() {
      const open = (port: number) => {
        try {
          const s = openUdp({ host: node.host, port }, node.udp);
          opened.push(s);
          return s;
        } catch (error) {
          const why = errorMessage(error);
          // Named as the whole AP was when it bound in its worker: the start failed in its VM.
          throw new StartError(link ? `${why} (in VM ${link.vm})` : why);
        }
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
          allow_sources: params.allow_sources,
        },
        { registration: reg, registrationRtcp: regRtcp },
        link ? { ...node, labels: { session, vm: link.vm } } : node,
        new Map(),
        link ? { control } : null,
      );
      node.logger.info("reflector listening", {
        session,
        ap: name,
        registration: registration ?? 0,
        ...(link ? { vm: link.vm, table: "in its VM's worker" } : {}),
      });
      return Promise.resolve();
    },
    push(_input, batch, rtcp) {
      reflector?.reflect(batch, rtcp);
    },
    async stop() {
      if (link) link.onMessage = null;
      if (reflector) await reflector.close();
      else for (const s of opened) await s.close();
    },
    status: () => {
      if (!reflector) return {};
      const split = link
        ? {
          table: `in VM ${link.vm}`,
          control_dropped: controlDropped,
          control_lost: controlLost,
          bad_answers: badAnswers,
        }
        : {};
      return { reflector: { ...reflector.status(), ...split } };
    },
  };
}

/**
 * The worker's half of a reflector in a VM group: the participant table and its join protocol, answering the
 * control datagrams the main isolate's half hands on, and dropping silent participants, as a whole reflector does.
 */
function tableHalf(ctx: Ctx, link: EdgeLink): Element {
  const { name, session, params, node } = ctx;
  const table = new ParticipantTable({
    clock: node.clock,
    timeoutMs: params.timeout * 1000,
    maxParticipants: params.max_participants,
    maxPerAddress: params.max_per_address,
    allow: params.allow,
    // The main isolate's half sends from sockets bound on the node's address: IPv4 ones reach IPv4 only.
    ipv4Only: isIPv4(node.host),
  });
  let participantRtcp = 0;
  let timer: TimerId | undefined;
  let stopped = false;

  // The list goes with an answer only when it changed, or a second passed (its last-seen times): junk on the
  // registration port costs no copy of up to max_participants entries per batch, here or in the main isolate.
  let sentVersion = -1;
  let sentAt = -Infinity;
  const post = (answer: boolean, rtcp: boolean, replies: AnswerMessage["replies"]) => {
    const now = node.clock.now();
    const fresh = table.version !== sentVersion || now - sentAt >= LIST_REFRESH_MS;
    if (fresh) [sentVersion, sentAt] = [table.version, now];
    const stats = { ...table.stats, participant_rtcp: participantRtcp };
    const message: AnswerMessage = {
      answer,
      rtcp,
      replies,
      report: fresh ? { stats, participants: table.list() } : { stats },
    };
    link.post(message);
  };

  const expire = () => {
    if (stopped) return;
    const dropped = table.expire();
    if (dropped) {
      node.logger.info("participants timed out", { reflector: `${session}/${name}`, dropped });
      post(false, false, []);
    }
    timer = node.clock.setTimeout(expire, Math.max(100, Math.min(1000, (params.timeout * 1000) / 4)));
  };

  link.onMessage = (value) => {
    const m = value as Partial<ControlMessage> | null;
    const rtcp = m?.rtcp === true;
    const replies: { host: string; port: number; data: Uint8Array }[] = [];
    for (const d of Array.isArray(m?.datagrams) ? m.datagrams : []) {
      if (!(d?.data instanceof Uint8Array) || typeof d.host !== "string" || typeof d.port !== "number") {
        continue;
      }
      // On the RTCP registration port, participants' own RTCP is expected: counted, not a message.
      if (rtcp && isRtcp(d.data)) {
        participantRtcp++;
        continue;
      }
      const from = { host: d.host, port: d.port };
      const reply = table.onControl(d.data, from);
      if (reply) replies.push({ ...from, data: reply });
    }
    post(true, rtcp, replies);
  };

  return {
    start() {
      post(false, false, []);
      timer = node.clock.setTimeout(expire, Math.max(100, Math.min(1000, (params.timeout * 1000) / 4)));
      return Promise.resolve();
    },
    push() {
      // The data path is the main isolate's half: nothing is delivered here.
    },
    stop() {
      stopped = true;
      if (timer !== undefined) node.clock.clearTimeout(timer);
      link.onMessage = null;
      return Promise.resolve();
    },
    status: () => ({
      table: { ...table.stats, participant_rtcp: participantRtcp, participants: table.size },
    }),
  };
}
