"""One boto3 `apigatewaymanagementapi` call against Hermes, as application code makes it.

    python boto3_calls.py '{"endpoint": "http://127.0.0.1:8081/production", "key_id": "...",
                            "secret": "...", "region": "us-east-1", "op": "post",
                            "connection_id": "...", "data": "text", "clock_offset_seconds": 0}'

`op` is `post` (post_to_connection), `get` (get_connection) or `delete` (delete_connection).
The client is boto3's own, configured only with the endpoint, the credentials and the region
(and no retries, so that a refusal is seen as it is: botocore retries a clock-skew refusal).
`clock_offset_seconds` signs with a clock that far off (negative: a request signed that long
ago and sent now, i.e. a replay). Prints one JSON line: {"ok": {...}} with the answer, or
{"error": {"code", "status", "message"}} with the ClientError; plus "path", the URL path
botocore sent.
"""

import datetime
import json
import sys
from unittest import mock

import boto3
import botocore.auth
from botocore.config import Config
from botocore.exceptions import ClientError


def main() -> None:
    args = json.loads(sys.argv[1])
    session = boto3.session.Session(
        aws_access_key_id=args["key_id"],
        aws_secret_access_key=args["secret"],
        region_name=args["region"],
    )
    client = session.client(
        "apigatewaymanagementapi",
        endpoint_url=args["endpoint"],
        config=Config(retries={"total_max_attempts": 1}),
    )
    sent = {}

    def record(request, **_):
        sent["path"] = request.url.split("://", 1)[-1].split("/", 1)[-1]

    client.meta.events.register("before-send.apigatewaymanagementapi", record)

    offset = datetime.timedelta(seconds=args.get("clock_offset_seconds", 0))
    real_now = botocore.auth.get_current_datetime
    with mock.patch.object(
        botocore.auth, "get_current_datetime", lambda: real_now() + offset
    ):
        try:
            result = call(client, args)
        except ClientError as e:
            result = {
                "error": {
                    "code": e.response["Error"].get("Code"),
                    "status": e.response["ResponseMetadata"].get("HTTPStatusCode"),
                    "message": e.response["Error"].get("Message"),
                    "is_gone": isinstance(e, client.exceptions.GoneException),
                }
            }
    result["path"] = "/" + sent.get("path", "")
    print(json.dumps(result))


def call(client, args) -> dict:
    op, connection_id = args["op"], args["connection_id"]
    if op == "post":
        answer = client.post_to_connection(
            ConnectionId=connection_id, Data=args["data"].encode()
        )
        return {"ok": {"status": answer["ResponseMetadata"]["HTTPStatusCode"]}}
    if op == "get":
        answer = client.get_connection(ConnectionId=connection_id)
        return {
            "ok": {
                "status": answer["ResponseMetadata"]["HTTPStatusCode"],
                "connected_at": answer["ConnectedAt"].isoformat(),
                "last_active_at": answer["LastActiveAt"].isoformat(),
                "source_ip": answer["Identity"]["SourceIp"],
                "user_agent": answer["Identity"]["UserAgent"],
            }
        }
    if op == "delete":
        answer = client.delete_connection(ConnectionId=connection_id)
        return {"ok": {"status": answer["ResponseMetadata"]["HTTPStatusCode"]}}
    raise SystemExit(f"unknown op {op!r}")


if __name__ == "__main__":
    main()
