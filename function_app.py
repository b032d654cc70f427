"""Route map of the Azure Functions app; the logic lives in realtime_proxy/.

Handlers are `async def`: the Python worker runs them on its event loop, so one instance brokers many
connects at once while each waits on Azure (docs/operating.md, "Scale and worker settings").
"""

import azure.functions as func

from realtime_proxy.service import RealtimeProxy

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
proxy = RealtimeProxy.from_environ()
CONNECT_AUTH = func.AuthLevel(proxy.settings.connect_auth_level)
CALLS_QUEUE = proxy.settings.supervision.queue  # REALTIME_SUPERVISOR_QUEUE: admitted calls, to their supervisors


@app.route(route="connect", methods=["POST"], auth_level=CONNECT_AUTH)
@app.queue_output(arg_name="calls", queue_name=CALLS_QUEUE, connection="AzureWebJobsStorage")
async def connect(req: func.HttpRequest, calls: func.Out[str]) -> func.HttpResponse:
    return await proxy.connect(req, calls)


@app.route(route="connect", methods=["OPTIONS"])
async def connect_preflight(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.preflight(req)


@app.route(route="calls/{call_id}/hangup", methods=["POST"])
async def hang_up(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.hang_up(req)


@app.route(route="calls/{call_id}/hangup", methods=["OPTIONS"])
async def hang_up_preflight(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.hang_up_preflight(req)


# Routes starting with "admin" belong to the Functions host. The operator's routes take the admin (master) key
# only: a function key may be embedded in public pages (CONNECT_AUTH_LEVEL=function), so it must not pause the app.
@app.route(route="operator/pause", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
async def pause(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.pause(req)


@app.route(route="operator/resume", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
async def resume(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.resume(req)


@app.route(route="operator/calls", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
async def operator_calls(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.operator_calls(req)


# One run per live call, for as long as the call lasts (host.json: functionTimeout, extensions.queues).
@app.queue_trigger(arg_name="message", queue_name=CALLS_QUEUE, connection="AzureWebJobsStorage")
async def supervise(message: func.QueueMessage) -> None:
    await proxy.supervise(message.get_body())


@app.timer_trigger(schedule="0 * * * * *", arg_name="timer", run_on_startup=False)
async def sweep(timer: func.TimerRequest) -> None:
    await proxy.sweep()


@app.route(route="config", methods=["GET"])
async def config(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.config(req)


@app.route(route="{*path}", methods=["GET", "HEAD"])
async def static(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.static(req)
