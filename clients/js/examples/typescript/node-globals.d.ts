// The two Node globals server.cts uses, so the example needs no @types/node.
declare const process: { env: Record<string, string | undefined>; exitCode?: number };
