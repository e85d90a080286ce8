/** A box running every role on loopback, for the dashboard's tests: its status app, its clock, its ports. */
import { type ApplianceDeps, startAppliance } from "../../lib/appliance.ts";
import { loadConfig } from "../../lib/config/load.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import type { HostPort } from "../../lib/net/address.ts";
import type { Handler } from "../../lib/net/http.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";
import { freeTcpPort, freeUdpPort } from "../_support/ports.ts";

export const TOKEN = "dash-secret-token-0123456789";
export const EVIL = `<img src=x onerror=alert(1)>`;

/** A box with every role: a scheduler service, a relay, a reflector, a session with a VM group, an agent. */
export async function dashboardBox(options: { listen?: boolean } = {}) {
  const dir = await Deno.makeTempDir({ prefix: "edgenode_dash_" });
  const input = freeUdpPort();
  const relayIn = freeUdpPort();
  const program = `${dir}/lecture.dipronn`;
  await Deno.writeTextFile(
    program,
    `Project lecture;
{ AP name="In" ref=localservice.duplicator;
    inputs = in(DIPRONN_INPUT(${input}));
    outputs = o1(Count.in), o2(Fw.in);
}
{ AP name="Count" ref=localservice.counter; inputs = in; }
{ VM name="vm1" ref=img;
  { AP name="Fw" ref=localservice.forwarder; inputs = in; outputs = out(DIPRONN_OUTPUT("127.0.0.1:${freeUdpPort()}")); }
}
`,
  );
  const config = `name: dash-box
roles: [scheduler, agent, relay, node]
status:
  listen: 127.0.0.1:0
  token: ${TOKEN}
scheduler:
  services:
    - name: web
      listen: 127.0.0.1:${freeTcpPort()}
      servers:
        - { address: 127.0.0.1:${freeTcpPort()} }
        - { address: 127.0.0.1:${freeTcpPort()}, weight: 2 }
agent:
  listen: 127.0.0.1:${freeTcpPort()}
relay:
  relays:
    - name: video
      listen: 127.0.0.1:${relayIn}
      targets: [127.0.0.1:${freeUdpPort()}]
  reflectors:
    - name: lecture
      data: 127.0.0.1:${freeUdpPort()}
      registration: 127.0.0.1:${freeUdpPort()}
      allow: [loopback]
node:
  bind: 127.0.0.1
  data_dir: ${dir}/data
  allow_loopback_output: true
  sessions: [${program}]
`;
  const roles = builtinRoles();
  const plan = loadConfig(config, { file: "dash.yaml", roles });
  const clock = new ManualClock(Date.UTC(2026, 11, 4, 12));
  let handler: Handler | undefined;
  const deps: ApplianceDeps = {
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    roles,
    hostname: () => "dash-host",
    // A real listener for a browser; else the handler is called directly.
    ...(options.listen ? {} : {
      listen: (h: Handler, addr: HostPort) => {
        handler = h;
        return { addr: { ...addr, port: 1 }, stop: () => Promise.resolve() };
      },
    }),
  };
  const appliance = await startAppliance(plan, deps);
  const sender = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  return {
    clock,
    url: `http://127.0.0.1:${appliance.statusAddr.port}`,
    input,
    relayIn,
    async get(path: string, init?: RequestInit): Promise<Response> {
      if (!handler) return await fetch(`http://127.0.0.1:${appliance.statusAddr.port}${path}`, init);
      return await handler(new Request(`http://status.test${path}`, init));
    },
    async send(port: number, count: number): Promise<void> {
      for (let i = 0; i < count; i++) {
        await sender.send(new Uint8Array(100), { transport: "udp", hostname: "127.0.0.1", port });
      }
    },
    async [Symbol.asyncDispose]() {
      sender.close();
      await appliance.stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
}
