"""Route map of the Azure Functions app; the logic lives in realtime_proxy/.

Handlers are `async def`: the Python worker runs them on its event loop, so one instance brokers many
connects at once while each waits on Azure (see README, "Concurrency").
"""
import azure.functions as func

from realtime_proxy.service import RealtimeProxy

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
proxy = RealtimeProxy.from_environ()
CONNECT_AUTH = func.AuthLevel(proxy.settings.connect_auth_level)


@app.route(route="connect", methods=["POST"], auth_level=CONNECT_AUTH)
async def connect(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.connect(req)


@app.route(route="connect", methods=["OPTIONS"])
async def connect_preflight(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.preflight(req)


@app.route(route="config", methods=["GET"])
async def config(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.config(req)


@app.route(route="{*path}", methods=["GET", "HEAD"])
async def static(req: func.HttpRequest) -> func.HttpResponse:
    return await proxy.static(req)
