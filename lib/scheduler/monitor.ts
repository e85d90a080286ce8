/**
 * Live status of a service's servers: an active health check per server (TCP connect, optional send/expect, with
 * interval, timeout, rise and fall) and a poll of the server's agent when it has one. Checks of one service are
 * spread over the interval so they do not all leave at once; one check per server is in flight at most. Time and
 * the network exchange are injected, so tests drive checks with a ManualClock and scripted answers.
 */
import type { Clock, TimerId } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import type { HostPort } from "../net/address.ts";
import { type ExchangeOptions, type ExchangeResult, tcpExchange } from "../net/tcp/exchange.ts";
import { MAX_AGENT_REPLY, parseAgentReply } from "../net/agent_check.ts";
import type { ServiceSettings } from "./config.ts";
import type { Server, Transition } from "./server.ts";

export type Exchange = (addr: HostPort, options: ExchangeOptions) => Promise<ExchangeResult>;

export interface MonitorDeps {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly service: string;
  /** Called after a server went up or down (the service wakes its queue, forgets persistence). */
  readonly onChange: (server: Server, transition: Exclude<Transition, null>) => void;
  /** Called after an agent's reply was applied: it may have made room (maxconn, ready, weight) for queued clients. */
  readonly onAgentReply?: (server: Server) => void;
  readonly exchange?: Exchange;
}

/** Most bytes read from an agent: one more than the longest reply the parser takes, so it sees an overlong one. */
const AGENT_REPLY_MAX = MAX_AGENT_REPLY + 1;

export class Monitor {
  readonly #timers = new Set<TimerId>();
  #stopped = false;
  /** Checks and agent polls that have run. */
  checks = 0;
  agentPolls = 0;

  constructor(
    private readonly servers: readonly Server[],
    private readonly settings: ServiceSettings,
    private readonly deps: MonitorDeps,
  ) {}

  start(): void {
    const n = this.servers.length;
    this.servers.forEach((server, i) => {
      this.#every(this.settings.check.interval, i / n, () => this.#check(server));
      if (server.spec.agent) {
        const agent = server.spec.agent;
        this.#every(this.settings.agent_interval, i / n, () => this.#poll(server, agent));
      }
    });
  }

  stop(): void {
    this.#stopped = true;
    for (const id of this.#timers) this.deps.clock.clearTimeout(id);
    this.#timers.clear();
  }

  /** Runs `task` first after `phase` of the interval, then `interval` after each run ends. */
  #every(interval: number, phase: number, task: () => Promise<void>): void {
    const { clock } = this.deps;
    const arm = (ms: number) => {
      const id = clock.setTimeout(async () => {
        this.#timers.delete(id);
        if (this.#stopped) return;
        await task();
        if (!this.#stopped) arm(interval);
      }, ms);
      this.#timers.add(id);
    };
    arm(Math.floor(interval * phase));
  }

  async #check(server: Server): Promise<void> {
    const { check } = this.settings;
    const result = await this.#exchange(server.addr, {
      timeoutMs: check.timeout,
      clock: this.deps.clock,
      send: check.send,
      expect: check.expect,
    });
    if (this.#stopped) return;
    this.checks++;
    // This host out of descriptors says nothing about the server: the check counts neither way.
    if (!result.ok && result.local) return;
    const detail = result.ok ? "ok" : result.error;
    this.#report(server, server.observe(result.ok, detail, this.deps.clock.now()), detail);
  }

  async #poll(server: Server, agent: HostPort): Promise<void> {
    const result = await this.#exchange(agent, {
      timeoutMs: this.settings.agent_timeout,
      clock: this.deps.clock,
      read: true,
      maxBytes: AGENT_REPLY_MAX,
    });
    if (this.#stopped) return;
    this.agentPolls++;
    const now = this.deps.clock.now();
    if (!result.ok) {
      // An agent that cannot be reached says nothing about the server itself (HAProxy does the same).
      server.agentReport(null, null, result.error, now);
      return;
    }
    const reply = parseAgentReply(result.reply);
    if (reply.problems.length) {
      this.deps.logger.warn("agent reply has words it cannot use", {
        service: this.deps.service,
        server: server.key,
        reply: result.reply.trim().slice(0, 120),
        problems: reply.problems.join("; "),
      });
    }
    this.#report(server, server.agentReport(reply, result.reply, null, now), `agent: ${result.reply.trim()}`);
    this.deps.onAgentReply?.(server);
  }

  #report(server: Server, transition: Transition, detail: string): void {
    if (!transition) return;
    const log = transition === "down" ? this.deps.logger.warn : this.deps.logger.info;
    log.call(this.deps.logger, `server ${transition}`, {
      service: this.deps.service,
      server: server.key,
      detail,
    });
    this.deps.onChange(server, transition);
  }

  #exchange(addr: HostPort, options: ExchangeOptions): Promise<ExchangeResult> {
    return (this.deps.exchange ?? tcpExchange)(addr, options);
  }
}
