/**
 * The nginx.conf the tests and benchmarks run nginx with: one worker in the foreground, every path under `dir` (no
 * root-owned default), no access log, long keepalive, and `GET /` answering `hello`. Callers add http settings and
 * locations of their own.
 */
export function nginxConfig(
  dir: string,
  listen: string,
  extra: { readonly http?: readonly string[]; readonly locations?: readonly string[] } = {},
): string {
  const indent = (lines: readonly string[] = [], by = "  ") => lines.map((l) => `${by}${l}\n`).join("");
  return `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
${indent(extra.http)}  server {
    listen ${listen} backlog=4096;
    location = / { return 200 "hello\\n"; }
${indent(extra.locations, "    ")}  }
}
`;
}
