/**
 * edgenode: parse the command line, load the config into a plan, start the roles and the status API, and stop on
 * SIGINT/SIGTERM. This is the only place that touches the process (exit codes, signals, stdout).
 *
 * Exit status: 0 stopped cleanly (or --check found no error), 1 config or start failure, 2 usage error.
 */
import { startAppliance } from "./lib/appliance.ts";
import { parseCommandLine, usage } from "./lib/cli/args.ts";
import { checkNamedFiles } from "./lib/cli/check_files.ts";
import { runProbe } from "./lib/cli/probe.ts";
import { readProgramFile, readUsageFile, runProgramCommand } from "./lib/cli/program.ts";
import { EMBEDDED_SOURCE, loadConfig, MAX_CONFIG_BYTES } from "./lib/config/load.ts";
import { applyOverrides, type Plan } from "./lib/config/plan.ts";
import { systemClock } from "./lib/core/clock.ts";
import { ErrorList, errorMessage, StartError, UsageError } from "./lib/core/errors.ts";
import { readTextFileLimited } from "./lib/core/files.ts";
import { guardProcess } from "./lib/core/guard.ts";
import { Logger } from "./lib/core/logger.ts";
import { Registry } from "./lib/core/registry.ts";
import { formatHostPort } from "./lib/net/address.ts";
import { processSockets } from "./lib/net/handover.ts";
import { builtinRoles } from "./lib/roles/mod.ts";
import { Takeover } from "./lib/takeover/client.ts";
import { ControlServer } from "./lib/takeover/control.ts";
import { VERSION } from "./lib/version.ts";

const encoder = new TextEncoder();
const out = (text: string) => Deno.stdout.writeSync(encoder.encode(text));
const err = (text: string) => Deno.stderr.writeSync(encoder.encode(text));

export async function main(args: readonly string[]): Promise<number> {
  const roles = builtinRoles();
  try {
    const commands = subcommands();
    const command = parseCommandLine(args, { roles: roles.names(), subcommands: commands.names() });
    if (command.kind === "help") return out(usage(VERSION, roles.values(), commands.values())), 0;
    if (command.kind === "version") return out(`edgenode ${VERSION}\n`), 0;
    if (command.kind === "sub") return await commands.get(command.name).run(command.args);
    const { options } = command;

    const file = options.config ?? EMBEDDED_SOURCE;
    const text = options.config === undefined ? "" : await readConfig(options.config);
    const plan = applyOverrides(
      loadConfig(text, { file, roles, env: (name) => Deno.env.get(name) }),
      options,
      roles,
    );
    if (options.check) {
      await checkFilesOf(plan);
      out(`${file}: config OK (${describe(plan)})\n`);
      return 0;
    }
    // A reload reads and checks the config exactly as --check does, with the same command-line overrides.
    const reread = async () => {
      const text = options.config === undefined ? "" : await readConfig(options.config);
      const next = applyOverrides(
        loadConfig(text, { file, roles, env: (name) => Deno.env.get(name) }),
        options,
        roles,
      );
      await checkFilesOf(next, { clusterToken: false });
      return next;
    };
    // A takeover checks everything --check does before it asks the running process for anything.
    if (options.takeover !== undefined) await checkFilesOf(plan);
    return await run(plan, reread, options.takeover);
  } catch (error) {
    if (error instanceof UsageError) return err(`edgenode: ${error.message}\n`), 2;
    if (error instanceof ErrorList) {
      err(`${error.format()}\nedgenode: ${error.message}\n`);
      return 1;
    }
    if (error instanceof StartError) return err(`edgenode: ${error.message}\n`), 1;
    if (error instanceof Error && args[0] !== undefined && !args[0].startsWith("-")) {
      // A sub-command that failed while running (a reflector that never answered): one line, exit 1.
      return err(`edgenode ${args[0]}: ${error.message}\n`), 1;
    }
    throw error;
  }
}

/** Sub-commands by name; each parses its own arguments and returns an exit status. */
function subcommands() {
  const stop = new AbortController();
  const abort = () => stop.abort();
  return new Registry<{ name: string; description: string; run(args: readonly string[]): Promise<number> }>(
    "command",
    [{
      name: "probe",
      description: "send or receive measured test streams (probe --help)",
      async run(args) {
        Deno.addSignalListener("SIGINT", abort);
        try {
          return await runProbe(args, { out, err, tty: Deno.stderr.isTerminal(), signal: stop.signal });
        } finally {
          Deno.removeSignalListener("SIGINT", abort);
        }
      },
    }, {
      name: "program",
      description: "check, plan or print a DiProNN session program (program --help)",
      run: (args) => runProgramCommand(args, { out, err, readFile: readProgramFile, readUsageFile }),
    }],
  );
}

/** The files a plan names (agent-rules, boot session programs), checked: ErrorList with each at its place. */
async function checkFilesOf(plan: Plan, o: { clusterToken?: boolean } = {}): Promise<void> {
  const problems = await checkNamedFiles(plan, undefined, o);
  if (problems.length) {
    throw new ErrorList(problems, `${plan.source}: ${problems.length} error(s) in the files it names`);
  }
}

function readConfig(path: string): Promise<string> {
  return readTextFileLimited(path, MAX_CONFIG_BYTES, "config");
}

function describe(plan: Plan): string {
  return `roles: ${plan.roles.join(", ")}; status on ${formatHostPort(plan.status.listen)}`;
}

/**
 * Runs the appliance until a signal, or until a new process took it over through the control socket. With
 * `takeoverPath`, this process first receives the running one's sockets (the config is already checked), starts on
 * them, then tells that one to drain; a failed start tells it to go on, untouched.
 */
async function run(plan: Plan, reread: () => Promise<Plan>, takeoverPath?: string): Promise<number> {
  const logger = new Logger({ level: plan.log.level, clock: systemClock });
  // An error no part caught (in a timer, a loop, an unawaited promise) is logged; the node stays up.
  using _guard = guardProcess(logger);

  // Signals are ours from before the first part starts, so one arriving during start-up still stops what started.
  // First signal: drain within the deadline. Second signal: cut the drain short.
  const force = new AbortController();
  const stopped = Promise.withResolvers<string>();
  let signals = 0;
  /** The first stop signal, once one came. */
  let stopSignal: Deno.Signal | null = null;
  const onSignal = (signal: Deno.Signal) => () => {
    if (signals++ === 0) {
      stopSignal = signal;
      stopped.resolve(signal);
    } else force.abort(new Error(`Second ${signal}`));
  };
  // SIGHUP reloads the config (as POST /reload does); one that comes while starting is kept for when it is up (its
  // default action would end the process).
  let reload: ((trigger: string) => unknown) | null = null;
  let hangupWaiting = false;
  const onHangup = () => reload ? void reload("SIGHUP") : void (hangupWaiting = true);
  const handlers: [Deno.Signal, () => void][] = [
    ...(["SIGINT", "SIGTERM"] as const).map((s): [Deno.Signal, () => void] => [s, onSignal(s)]),
    ["SIGHUP", onHangup],
  ];
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);
  const sockets = processSockets();
  const controlPath = plan.process.control_socket;
  // Sockets Deno keeps to itself bind with SO_REUSEPORT, so a successor can bind beside them.
  sockets.overlap = controlPath !== null || takeoverPath !== undefined;
  let control: ControlServer | null = null;
  const openControl = (path: string) =>
    ControlServer.open(path, {
      registry: sockets,
      logger: logger.child("control"),
      drainTimeoutMs: plan.shutdown.drain_timeout,
      handOver: () => stopped.resolve("takeover"),
    });
  try {
    const takeover = takeoverPath === undefined
      ? null
      : await Takeover.begin(takeoverPath, { registry: sockets, logger: logger.child("takeover") });
    // A stop signal during a takeover's start-up: the running process is told to go on, and this one stops.
    const stopTakeover = async (): Promise<boolean> => {
      if (!takeover || stopSignal === null) return false;
      await takeover.abort(`stopped by ${stopSignal}`);
      logger.warn("takeover abandoned: stopped while starting; the running process goes on serving", {
        signal: stopSignal,
      });
      return true;
    };
    if (await stopTakeover()) return 0;
    // Without a takeover the control socket is made first, so a live one at the path fails before anything binds.
    if (!takeover && controlPath !== null) control = openControl(controlPath);
    let appliance;
    try {
      appliance = await startAppliance(plan, {
        clock: systemClock,
        logger,
        roles: builtinRoles(),
        hostname: () => Deno.hostname(),
        reread,
      });
    } catch (error) {
      if (takeover) {
        await takeover.abort(errorMessage(error));
        logger.error("takeover failed; the running process goes on serving", { error: errorMessage(error) });
      }
      throw error;
    }
    if (takeover) {
      // Nothing awaits between this check and the "ready" commit() sends, so no signal can slip in between.
      let failure: string | null = null;
      if (!await stopTakeover()) {
        try {
          await takeover.commit();
        } catch (error) {
          failure = errorMessage(error);
          logger.error("takeover failed; stopping (the running process goes on serving)", { error: failure });
        }
      }
      if (stopSignal !== null || failure !== null) {
        const failed = (await appliance.stop(force.signal)).filter((r) => r.error).length;
        logger.info(failed ? "stopped with failures" : "all stopped", { failed });
        return failure !== null || failed ? 1 : 0;
      }
      // The running process removed its socket file before it answered: the path is this process's now.
      if (controlPath !== null) {
        try {
          control = openControl(controlPath);
        } catch (error) {
          logger.error("control socket not made; this process cannot be taken over", {
            error: errorMessage(error),
          });
        }
      }
    }
    control?.serve();
    // A reload already running takes the next one after it.
    reload = (trigger) => appliance.reload(trigger);
    if (hangupWaiting) reload("SIGHUP");
    logger.info("running", {
      name: appliance.name,
      version: VERSION,
      config: plan.source,
      roles: plan.roles.join(","),
      status: `http://${formatHostPort(appliance.statusAddr)}/status`,
    });
    const signal = await stopped.promise;
    await control?.close();
    logger.info("stopping", { signal, drain_timeout_ms: plan.shutdown.drain_timeout });
    const failed = (await appliance.stop(force.signal)).filter((r) => r.error).length;
    logger.info(failed ? "stopped with failures" : "all stopped", { failed });
    return failed ? 1 : 0;
  } finally {
    await control?.close();
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
