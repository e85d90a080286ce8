/**
 * Load-aware redirects, RealNetworks' way done with live status: the scheduler picks the server and the answer
 * points a player straight at it. A path ending in `.ram` (RealPlayer), `.m3u` (playlist) or `.sdp` (session
 * description) gets that metafile, built on the fly, with the extension dropped from the stream's path; any other
 * path gets an HTTP 302 to the server's URL. The URL comes from the service's `redirect` template.
 */
import { type HostPort, isIPv6 } from "../net/address.ts";

export type RedirectAnswer =
  | { readonly kind: "redirect"; readonly url: string }
  | { readonly kind: "file"; readonly contentType: string; readonly body: string; readonly url: string };

const METAFILES: Record<
  string,
  { type: string; body: (url: string, server: HostPort, name: string) => string }
> = {
  ".ram": { type: "audio/x-pn-realaudio", body: (url) => `${url}\n` },
  ".m3u": { type: "audio/x-mpegurl", body: (url) => `#EXTM3U\n${url}\n` },
  ".sdp": {
    type: "application/sdp",
    // A session description that names the server and the stream's control URL (RFC 4566, RFC 2326 C.1.1).
    body: (url, server, name) => {
      const family = isIPv6(server.host) ? "IP6" : "IP4";
      return [
        "v=0",
        `o=- 0 0 IN ${family} ${server.host}`,
        `s=${name}`,
        `c=IN ${family} ${server.host}`,
        "t=0 0",
        `a=control:${url}`,
        "",
      ].join("\r\n");
    },
  },
};

/** Fills `{host}`, `{port}` and `{path}` of `template` (IPv6 hosts in brackets). */
export function serverUrl(template: string, server: HostPort, path: string): string {
  const host = isIPv6(server.host) ? `[${server.host}]` : server.host;
  return template.replaceAll("{host}", host).replaceAll("{port}", String(server.port)).replaceAll(
    "{path}",
    path,
  );
}

/** The answer for a request of `path` (which starts with `/`) sent to `server`. */
export function metafile(template: string, server: HostPort, path: string, service: string): RedirectAnswer {
  const dot = path.lastIndexOf(".");
  const ext = dot > path.lastIndexOf("/") ? path.slice(dot).toLowerCase() : "";
  const meta = METAFILES[ext];
  if (!meta) return { kind: "redirect", url: serverUrl(template, server, path) };
  const url = serverUrl(template, server, path.slice(0, dot));
  return { kind: "file", contentType: meta.type, body: meta.body(url, server, service), url };
}
