/**
 * Sandboxes for user-uploaded active programs (issue 19): each VM group of uploaded code runs in a `deno run` child
 * of its own, with no --allow-* flag but read access to its upload, a V8 heap limit and hard limits on its memory
 * outside the heap (`prlimit --data` and `--as`), kept running with backoff by a Supervisor. The host (host.ts)
 * passes batches in and out over a unix socket only that child may reach (frames.ts), bounds what is in flight, kills a handler
 * that misses its deadline, counts drops by reason and denied permissions, and reports the group's state, restarts,
 * last error, memory and CPU time. The program's contract is in contract.ts; tests/bench/sandbox_options.ts has the
 * measurements that chose a process over a Web Worker and a `node:worker_threads` worker.
 */
export type { Datagram, ParamDecl, ParamValue, PortsDecl } from "./contract.ts";
export {
  DEFAULT_LIMITS,
  DROP_REASONS,
  type DropReason,
  type ProgramInfo,
  SandboxHost,
  type SandboxLimits,
  type SandboxOptions,
  type SandboxProgram,
  type SandboxState,
} from "./host.ts";
export {
  DEFAULT_UPLOAD_LIMITS,
  SandboxLoadError,
  UploadError,
  type UploadLimits,
  uploadProblems,
} from "./upload.ts";
