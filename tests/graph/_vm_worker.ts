/** The worker module of VM groups in tests: the core kinds plus the test kinds of _vm_kinds.ts. */
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { serveVmGroup } from "../../lib/graph/vm/runtime.ts";
import { withTestKinds } from "./_vm_kinds.ts";

serveVmGroup(withTestKinds(coreElements()));
