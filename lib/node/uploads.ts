/**
 * `node.uploads`: what a node lets user-uploaded active programs have (issue 19), and how an upload reaches it.
 *
 * An upload is a multipart/form-data body of POST /node/sessions: the part named `program` is the session program
 * (a file part's name is the file its errors name), and every other part is one module, named by its file name (or,
 * for a plain field, by the field's name): `curl -F program=@session.dipronn -F module=@filter.ts ...`.
 */
import {
  absolutePath,
  bool,
  byteSize,
  duration,
  int,
  nullable,
  type ObjectOf,
  opt,
  section,
} from "../config/schema.ts";
import { DEFAULT_LIMITS } from "../sandbox/mod.ts";
import type { UploadOptions } from "./sessions.ts";

export const uploadFields = {
  enabled: opt(bool(), true, "sessions may bring modules of their own (ref=upload.NAME)"),
  heap_mb: opt(int({ min: 8, max: 16_384 }), DEFAULT_LIMITS.heapMb, "V8 heap of each sandbox process (MiB)"),
  memory_mb: opt(
    int({ min: 16, max: 65_536 }),
    DEFAULT_LIMITS.memoryMb,
    "memory a sandbox process may map beyond the runtime's own (heap, buffers, code), a hard limit (MiB)",
  ),
  deadline: opt(
    duration({ min: 1, max: 60_000 }),
    DEFAULT_LIMITS.deadlineMs,
    "a handler that does not return within it has its sandbox killed and restarted",
  ),
  max_in_flight: opt(
    int({ min: 1, max: 4096 }),
    DEFAULT_LIMITS.maxInFlight,
    "batches queued into one sandbox",
  ),
  max_in_flight_bytes: opt(
    byteSize({ min: 64 * 1024, max: 1024 * 1024 * 1024 }),
    DEFAULT_LIMITS.maxInFlightBytes,
    "bytes of batches queued into one sandbox: what a stalled sandbox can make the node hold",
  ),
  max_out_per_in: opt(
    int({ min: 1, max: 65_536 }),
    DEFAULT_LIMITS.maxOutPerIn ?? 16,
    "datagrams a sandbox may answer per datagram it was given, over all its outputs; an answer past it is dropped (output_cap)",
  ),
  max_modules: opt(int({ min: 1, max: 1000 }), DEFAULT_LIMITS.maxModules, "modules in one upload"),
  max_bytes: opt(
    byteSize({ min: 1, max: 64 * 1024 * 1024 }),
    DEFAULT_LIMITS.maxBytes,
    "source bytes in one upload",
  ),
  cpu_percent: opt(
    int({ min: 0, max: 6400 }),
    0,
    "percent of one core each sandbox process may use (a control group's CPU quota); 0: not capped",
  ),
  storage_bytes: opt(
    byteSize({ min: 0, max: 2 ** 50 }),
    64 * 1024 * 1024,
    "files a VM group's uploaded programs that declare needs.files may keep under node.data_dir/uploads; 0: none",
  ),
  nice: opt(
    int({ min: 0, max: 19 }),
    DEFAULT_LIMITS.nice ?? 10,
    "nice value of sandbox processes: above the node's, so its data path goes first when the cores are busy",
  ),
  shared_memory: opt(
    bool(),
    DEFAULT_LIMITS.sharedMemory ?? true,
    "batches cross to and from sandbox processes through memory shared with each (max_in_flight_bytes + 1 MiB, given back after a quiet second), not through its socket",
  ),
  max_processes: opt(int({ min: 0, max: 1024 }), 16, "sandbox processes of all sessions together"),
  start_timeout: opt(duration({ min: 100, max: 300_000 }), DEFAULT_LIMITS.startMs),
  deno: opt(
    nullable(absolutePath("an absolute path of the deno executable")),
    null,
    "the runtime sandbox processes run (default: this one's, when edgenode runs on deno)",
  ),
};

export const uploadsField = section(uploadFields);
export type UploadsSection = ObjectOf<typeof uploadFields>;

/** The session table's upload options, or null when uploads are off. */
export function uploadOptions(cfg: UploadsSection): UploadOptions | undefined {
  if (!cfg.enabled) return undefined;
  return {
    limits: {
      heapMb: cfg.heap_mb,
      memoryMb: cfg.memory_mb,
      deadlineMs: cfg.deadline,
      maxInFlight: cfg.max_in_flight,
      maxInFlightBytes: cfg.max_in_flight_bytes,
      maxOutPerIn: cfg.max_out_per_in,
      maxModules: cfg.max_modules,
      maxBytes: cfg.max_bytes,
      startMs: cfg.start_timeout,
      cpuShare: cfg.cpu_percent / 100,
      nice: cfg.nice,
      sharedMemory: cfg.shared_memory,
    },
    maxProcesses: cfg.max_processes,
    storageBytes: cfg.storage_bytes,
    ...(cfg.deno ? { deno: cfg.deno } : {}),
  };
}

/** A multipart body split into the program and its modules; a string naming what is wrong otherwise. */
export async function readUpload(
  form: FormData,
): Promise<{ program: string; file: string | null; modules: Record<string, string> } | string> {
  let program: string | null = null;
  let file: string | null = null;
  const modules: Record<string, string> = {};
  for (const [field, value] of form.entries()) {
    const text = typeof value === "string" ? value : await value.text();
    if (field === "program") {
      if (program !== null) return "the body has two parts named program";
      program = text;
      if (typeof value !== "string" && value.name) file = value.name;
      continue;
    }
    const name = typeof value === "string" ? field : value.name || field;
    if (Object.hasOwn(modules, name)) return `the body has two modules named "${name.slice(0, 60)}"`;
    modules[name] = text;
  }
  if (program === null) return "the body has no part named program (the session program)";
  return { program, file, modules };
}
