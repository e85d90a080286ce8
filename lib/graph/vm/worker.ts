/**
 * The module a VM group's worker runs: it serves the group with the core AP kinds. It is loaded by URL
 * (`new Worker(...)`), so `deno compile` must be told to include it (`--include lib/graph/vm/worker.ts`).
 */
import { coreElements } from "../elements/mod.ts";
import { serveVmGroup } from "./runtime.ts";

serveVmGroup(coreElements());
