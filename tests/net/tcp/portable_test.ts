import { portableTransport } from "../../../lib/net/tcp/portable.ts";
import { tcpContract } from "./contract.ts";

tcpContract("portable", () => portableTransport);
