"""Route map of the Azure Functions app; the logic lives in realtime_proxy/."""
import azure.functions as func

from realtime_proxy.service import RealtimeProxy

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
proxy = RealtimeProxy.from_environ()
CONNECT_AUTH = func.AuthLevel(proxy.settings.connect_auth_level)


@app.route(route="connect", methods=["POST"], auth_level=CONNECT_AUTH)
def connect(req: func.HttpRequest) -> func.HttpResponse:
    return proxy.connect(req)


@app.route(route="connect", methods=["OPTIONS"])
def connect_preflight(req: func.HttpRequest) -> func.HttpResponse:
    return proxy.connect.preflight(req)


@app.route(route="config", methods=["GET"])
def config(req: func.HttpRequest) -> func.HttpResponse:
    return proxy.config(req)


@app.route(route="{*path}", methods=["GET", "HEAD"])
def static(req: func.HttpRequest) -> func.HttpResponse:
    return proxy.static(req)
