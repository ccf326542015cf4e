#!/usr/bin/env python3
"""A TCP pass-through from shard A's annuaire-synapse module to annuaire, for the end-to-end journey.

It forwards every connection to annuaire unchanged (TLS stays end to end), so the module talks
to the real annuaire. It exists for one step of the journey: "annuaire stopped during a
registration". The stock threepid-checker asks annuaire at the very start of Synapse's final
/register call, and refuses the registration when annuaire does not answer; the module's first
call (GET display_name) comes right after that check, inside the same request. So the only
moment annuaire can be stopped "during a registration" without the checker failing it is
between those two calls, and the journey needs that moment to be deterministic.

When the file ARM_FILE exists, the next connection runs STOP_COMMAND (which stops the real
annuaire and waits until it has exited) before being forwarded: that forward is then refused,
like every later one until annuaire is started again.

usage: gate.py --upstream HOST:PORT --arm-file PATH --stop-command CMD
Prints "READY <port>" once listening on 127.0.0.1 (a free port).
"""

import argparse
import asyncio
import os
import shlex
import subprocess
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--arm-file", required=True)
    parser.add_argument("--stop-command", required=True)
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)

    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if os.path.exists(args.arm_file):
            os.remove(args.arm_file)
            print("gate: stopping annuaire before forwarding this connection", flush=True)
            done = await asyncio.to_thread(subprocess.run, shlex.split(args.stop_command))
            print(f"gate: stop command exited with {done.returncode}", flush=True)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError as err:
            print(f"gate: annuaire refused a connection ({type(err).__name__})", flush=True)
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
