"""The deployment templates (infra/, azure.yaml), checked without Azure.

The Bicep compiler cannot be installed here, so these tests stand in for what a compile and a review
would catch: they parse the templates with pycep-parser and hold them to what the app needs (the
OpenAI role on the app's identity, the settings the code reads, Flex Consumption) and to what it
must never do (keys, secrets, FTP, plain HTTP). checkov's Azure policies run over the same files.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests import tools

pycep = pytest.importorskip("pycep", reason=tools.pycep.missing)

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
OPENAI_USER_ROLE = "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd"  # Cognitive Services OpenAI User
BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
SEARCH_INDEX_DATA_READER = "1407120a-92aa-4202-b7e9-c0e197c71c8f"
# Read by the Functions host or platform, not by this app's code.
PLATFORM_PREFIXES = ("AzureWebJobsStorage__", "APPLICATIONINSIGHTS_", "FUNCTIONS_", "WEBSITE_")


@cache
def tree(name: str) -> dict:
    return pycep.BicepParser().parse(file_path=INFRA / name)


def render(node) -> str:
    """pycep's expression tree back to (roughly) Bicep text, so assertions read like the template."""
    if isinstance(node, dict):
        if set(node) == {"operator"}:
            op = node["operator"]
            args = op["operands"]
            if op["type"] == "property_accessor":
                return f"{render(args['operand_1'])}.{render(args['operand_2'])}"
            if op["type"] == "conditional":
                return f"{render(args['condition'])} ? {render(args['true_value'])} : {render(args['false_value'])}"
            return f"{op['type']}({', '.join(render(v) for v in args.values())})"
        if set(node) == {"function"}:
            fn = node["function"]
            params = (fn.get("parameters") or {}).values()
            return f"{fn['type']}({', '.join(render(v) for v in params if v is not None)})"
        return "{" + ", ".join(f"{k}: {render(v)}" for k, v in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(render(v) for v in node) + "]"
    return str(node)


def resolve(t: dict, node):
    """A bare identifier naming a variable becomes that variable's expression (pycep keeps both as str)."""
    while isinstance(node, str) and node in t.get("variables", {}):
        node = t["variables"][node]["value"]
    return node


def resources(t: dict, type_: str) -> dict[str, dict]:
    return {name: r for name, r in t["resources"].items() if r["type"] == type_}


def body(entry: dict) -> dict:
    """The declaration's body; pycep nests it one level deeper under `if (condition)`."""
    config = entry["config"]
    return config["config"] if "condition" in config else config


def only(t: dict, type_: str) -> dict:
    (found,) = resources(t, type_).values()
    return body(found)


def module_call(t: dict, path: str) -> dict:
    (found,) = [m for m in t["modules"].values() if m["detail"]["path"] == path]
    return body(found)


def settings_in(t: dict, node) -> dict[str, list]:
    """Every {name, value} app setting reachable from node, through variables, concat() and both ?: branches."""
    out: dict[str, list] = {}

    def walk(n):
        n = resolve(t, n)
        if isinstance(n, list):
            for item in n:
                walk(item)
        elif isinstance(n, dict) and set(n) == {"function"}:
            for arg in (n["function"].get("parameters") or {}).values():
                walk(arg)
        elif isinstance(n, dict) and set(n) == {"operator"}:
            operands = n["operator"]["operands"]
            for key, arg in operands.items():
                if key != "condition":
                    walk(arg)
        elif isinstance(n, dict) and set(n) == {"name", "value"}:
            out.setdefault(n["name"], []).append(n["value"])
        else:
            raise AssertionError(f"app settings hold something this test cannot read: {render(n)}")

    walk(node)
    return out


@cache
def app_settings() -> dict[str, list]:
    t = tree("modules/app.bicep")
    site = only(t, "Microsoft.Web/sites")
    assert not resources(t, "Microsoft.Web/sites/config"), "settings live in siteConfig.appSettings only"
    return settings_in(t, site["properties"]["siteConfig"]["appSettings"])


def identity_branch_settings(use_user_assigned: bool) -> set[str]:
    t = tree("modules/app.bicep")
    ids = resolve(t, "identitySettings")["operator"]["operands"]
    branch = ids["true_value" if use_user_assigned else "false_value"]
    return {s["name"] for s in branch} | set(settings_in(t, "commonSettings"))


def settings_the_code_reads() -> set[str]:
    pattern = re.compile(r"""(?:\bread\.\w+\(|environ\.get\(|getenv\(|environ\[)\s*["']([A-Z][A-Z0-9_]+)["']""")
    files = [*sorted((ROOT / "realtime_proxy").glob("*.py")), ROOT / "function_app.py"]
    return {name for f in files for name in pattern.findall(f.read_text())}


def bicep_text(path: Path) -> str:
    """Template text without // comments (which may name things like listKeys to say they are not used)."""
    return "\n".join(re.sub(r"(^|\s)//.*$", "", line) for line in path.read_text().splitlines())


# ---------------------------------------------------------------- structure a compiler would check


def test_every_template_parses():
    files = sorted(INFRA.rglob("*.bicep"))
    assert {f.relative_to(INFRA).as_posix() for f in files} >= {
        "main.bicep",
        "modules/app.bicep",
        "modules/openai.bicep",
        "modules/openai-role.bicep",
        "modules/search-role.bicep",
    }
    for f in files:
        assert tree(f.relative_to(INFRA).as_posix())["resources"], f


def test_modules_are_called_with_exactly_the_parameters_they_declare():
    main = tree("main.bicep")
    for name, module in main["modules"].items():
        declared = tree(module["detail"]["path"])["parameters"]
        passed = set(body(module)["params"])
        required = {p for p, spec in declared.items() if spec.get("default") is None}
        assert passed <= set(declared), f"{name} passes unknown parameters {passed - set(declared)}"
        assert required <= passed, f"{name} misses required parameters {required - passed}"


def test_azd_parameter_file_matches_main_bicep():
    main = tree("main.bicep")["parameters"]
    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(values) <= set(main), set(values) - set(main)
    assert {p for p, spec in main.items() if spec.get("default") is None} <= set(values)
    for name, entry in values.items():
        m = re.fullmatch(r"\$\{[A-Z_]+=(.*)\}", entry["value"])
        if m:  # an azd default must not silently differ from the template's own
            assert m.group(1) == str(main[name]["default"]).lower().replace("none", ""), name


def test_azure_yaml_deploys_this_folder_as_a_python_function_app():
    text = (ROOT / "azure.yaml").read_text()
    assert re.search(r"^\s+host: function$", text, re.M)
    assert re.search(r"^\s+language: python$", text, re.M)
    assert re.search(r"^\s+project: \.$", text, re.M)
    site_tags = render(only(tree("modules/app.bicep"), "Microsoft.Web/sites")["tags"])
    service = re.search(r"^services:\n\s+(\w+):", text, re.M)
    assert service, "azure.yaml lists no service"
    assert f"'azd-service-name': {service.group(1)}" in site_tags


# ---------------------------------------------------------------- identity and roles


def test_openai_user_role_is_granted_on_the_openai_resource_to_the_apps_identity():
    role = tree("modules/openai-role.bicep")
    (assignment,) = resources(role, "Microsoft.Authorization/roleAssignments").values()
    config = assignment["config"]
    scope = role["resources"][config["scope"]]
    assert scope["type"] == "Microsoft.CognitiveServices/accounts" and scope["existing"]
    assert scope["config"]["name"] == "accountName"
    definition = config["properties"]["roleDefinitionId"]["function"]["parameters"]
    assert resolve(role, definition["resource_name_1"]) == OPENAI_USER_ROLE
    assert config["properties"]["principalId"] == "principalId"

    main = tree("main.bicep")
    call = module_call(main, "modules/openai-role.bicep")
    assert render(call["params"]["principalId"]) == "app.outputs.principalId"
    # The same account the app is pointed at: the new one, or the existing one passed in.
    assert call["params"]["accountName"] == "openAiAccountName"
    assert render(call["scope"]) == render(main["resources"]["existingOpenAi"]["config"]["scope"])
    new = module_call(main, "modules/openai.bicep")
    assert new["params"]["name"] == "openAiAccountName"
    assert render(resolve(main, "openAiAccountName")).startswith("useExistingOpenAi ? last(")

    # ...and that principal is the identity the app authenticates with.
    app = tree("modules/app.bicep")
    assert app["outputs"]["principalId"]["value"] == "principalId"
    assert render(resolve(app, "principalId")) == (
        "useUserAssignedIdentity ? userIdentity.properties.principalId : app.identity.principalId"
    )


def test_the_optional_search_role_is_read_only_and_goes_to_the_apps_identity_on_the_given_service():
    role = tree("modules/search-role.bicep")
    (assignment,) = resources(role, "Microsoft.Authorization/roleAssignments").values()
    config = assignment["config"]
    scope = role["resources"][config["scope"]]
    assert scope["type"] == "Microsoft.Search/searchServices" and scope["existing"]
    definition = config["properties"]["roleDefinitionId"]["function"]["parameters"]
    assert resolve(role, definition["resource_name_1"]) == SEARCH_INDEX_DATA_READER
    assert config["properties"]["principalId"] == "principalId"

    main = tree("main.bicep")
    (module,) = [m for m in main["modules"].values() if m["detail"]["path"] == "modules/search-role.bicep"]
    assert module["config"]["condition"] == "useSearch", "only with a search service"
    call = module_call(main, "modules/search-role.bicep")
    assert render(call["params"]["principalId"]) == "app.outputs.principalId"
    assert call["params"]["serviceName"] == "searchServiceName"
    app_call = module_call(main, "modules/app.bicep")
    assert "searchServiceName" in render(app_call["params"]["searchEndpoint"])
    assert set(app_settings()) >= {"AZURE_SEARCH_ENDPOINT", "AZURE_SEARCH_INDEX"}


def test_host_storage_queue_and_telemetry_roles_go_to_the_same_principal():
    app = tree("modules/app.bicep")
    granted = {}
    for assignment in resources(app, "Microsoft.Authorization/roleAssignments").values():
        props = assignment["config"]["properties"]
        role_id = resolve(app, props["roleDefinitionId"]["function"]["parameters"]["resource_name_1"])
        granted[role_id] = (assignment["config"]["scope"], props["principalId"])
    assert granted == {
        BLOB_DATA_OWNER: ("storage", "principalId"),
        TABLE_DATA_CONTRIBUTOR: ("storage", "principalId"),
        QUEUE_DATA_CONTRIBUTOR: ("storage", "principalId"),
        METRICS_PUBLISHER: ("appInsights", "principalId"),
    }


def test_user_assigned_identity_is_named_to_every_consumer():
    user = identity_branch_settings(use_user_assigned=True)
    system = identity_branch_settings(use_user_assigned=False)
    assert {"AZURE_CLIENT_ID", "AzureWebJobsStorage__clientId"} <= user
    assert not {"AZURE_CLIENT_ID", "AzureWebJobsStorage__clientId"} & system
    site = only(tree("modules/app.bicep"), "Microsoft.Web/sites")
    auth = render(site["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"])
    assert "useUserAssignedIdentity ? UserAssignedIdentity : SystemAssignedIdentity" in auth


# ---------------------------------------------------------------- app settings against the code


def test_every_app_setting_in_the_template_is_read_by_the_code_or_the_platform():
    read = settings_the_code_reads()
    assert {"AZURE_OPENAI_BASE_URL", "AZURE_CLIENT_ID", "ALLOWED_ORIGINS"} <= read  # the scan itself works
    unknown = {n for n in app_settings() if n not in read and not n.startswith(PLATFORM_PREFIXES)}
    assert not unknown, f"set by the template but read by nothing: {sorted(unknown)}"


def test_every_setting_the_app_requires_is_set_in_both_identity_modes():
    from realtime_proxy.settings import load_settings

    required = {problem.split()[0] for problem in load_settings({}).problems}
    assert "AZURE_OPENAI_BASE_URL" in required
    required |= {
        "AZURE_OPENAI_DEPLOYMENT",
        "AzureWebJobsStorage__accountName",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    }
    for mode in (True, False):
        missing = required - identity_branch_settings(mode)
        assert not missing, f"useUserAssignedIdentity={mode}: missing {sorted(missing)}"
    assert [render(v) for v in app_settings()["AZURE_OPENAI_BASE_URL"]] == ["openAiBaseUrl"]
    assert app_settings()["AzureWebJobsStorage__credential"] == ["managedidentity"]
    assert app_settings()["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"][-1] == "Authorization=AAD"


def test_the_base_url_is_the_openai_host_the_code_accepts():
    from realtime_proxy.settings import normalize_base_url

    branches = resolve(tree("main.bicep"), "openAiBaseUrl")["operator"]["operands"]
    assert render(branches["false_value"]) == "openAi.outputs.baseUrl"
    created = tree("modules/openai.bicep")["outputs"]["baseUrl"]["value"]
    for template in (branches["true_value"], created):  # existing resource, new resource
        url = re.sub(r"\$\{[^}]+\}", "my-resource", template)
        assert normalize_base_url(url) == "https://my-resource.openai.azure.com", template


def test_concurrency_settings_follow_the_async_broker_design():
    main = tree("main.bicep")["parameters"]
    assert main["httpPerInstanceConcurrency"]["default"] == 64
    assert main["maximumInstanceCount"]["default"] == 40
    scale = only(tree("modules/app.bicep"), "Microsoft.Web/sites")["properties"]["functionAppConfig"][
        "scaleAndConcurrency"
    ]
    assert scale == {
        "instanceMemoryMB": 2048,
        "maximumInstanceCount": "maximumInstanceCount",
        "triggers": {"http": {"perInstanceConcurrency": "httpPerInstanceConcurrency"}},
    }


# ---------------------------------------------------------------- Flex Consumption and hardening


def test_flex_consumption_python_matching_the_tests():
    app = tree("modules/app.bicep")
    plan = only(app, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"} and plan["properties"]["reserved"] is True
    site = only(app, "Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux"
    assert site["properties"]["functionAppConfig"]["runtime"] == {
        "name": "python",
        "version": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    package = site["properties"]["functionAppConfig"]["deployment"]["storage"]
    assert package["type"] == "blobContainer"
    container = only(app, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert container["name"] == "deploymentContainerName" and package["value"].endswith("${deploymentContainerName}")
    assert container["properties"]["publicAccess"] == "None"


def test_https_only_tls12_no_ftp_no_basic_publishing():
    app = tree("modules/app.bicep")
    site = only(app, "Microsoft.Web/sites")
    assert site["properties"]["httpsOnly"] is True
    config = site["properties"]["siteConfig"]
    assert config["minTlsVersion"] == "1.2" and config["scmMinTlsVersion"] == "1.2"
    assert config["ftpsState"] == "Disabled"
    assert config["cors"] == {"allowedOrigins": []}, "one CORS mechanism: the app's own (docs/embedding.md)"
    policies = resources(app, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {p["config"]["name"]: p["config"]["properties"] for p in policies.values()} == {
        "ftp": {"allow": False},
        "scm": {"allow": False},
    }
    assert all(p["config"]["parent"] == "app" for p in policies.values())
    storage = only(app, "Microsoft.Storage/storageAccounts")["properties"]
    assert storage["minimumTlsVersion"] == "TLS1_2" and storage["supportsHttpsTrafficOnly"] is True
    assert storage["allowBlobPublicAccess"] is False


# ---------------------------------------------------------------- no keys, no secrets


def test_no_key_or_secret_is_read_set_or_output():
    for path in sorted(INFRA.rglob("*.bicep")):
        text = bicep_text(path)
        assert not re.search(r"\blist\w*\s*\(", text, re.I), f"{path.name} calls a list*() function"
        assert not re.search(r"@secure\(\)", text), f"{path.name} takes a secret parameter"
        assert not re.search(r"AccountKey=|SharedAccessSignature|primaryKey|secondaryKey|\.keys\b", text, re.I), path
        t = tree(path.relative_to(INFRA).as_posix())
        for name, output in t.get("outputs", {}).items():
            shown = f"{name} {render(output['value'])}"
            assert not re.search(r"key|secret|password|connectionstring|token", shown, re.I), shown

    names = set(app_settings())
    assert "AZURE_OPENAI_API_KEY" not in names, "keyless: the app uses its managed identity"
    assert not {n for n in names if re.search(r"KEY|SECRET|PASSWORD|TOKEN", n, re.I)}
    # The one connection string is Application Insights' (an ingestion endpoint and id, no credential),
    # and the component refuses telemetry that is not Entra-authenticated.
    assert {n for n in names if "CONNECTION" in n.upper()} == {"APPLICATIONINSIGHTS_CONNECTION_STRING"}
    assert [render(v) for v in app_settings()["APPLICATIONINSIGHTS_CONNECTION_STRING"]] == [
        "appInsights.properties.ConnectionString"
    ]
    app = tree("modules/app.bicep")
    assert only(app, "Microsoft.Insights/components")["properties"]["DisableLocalAuth"] is True
    assert only(app, "Microsoft.Storage/storageAccounts")["properties"]["allowSharedKeyAccess"] is False
    assert (
        only(tree("modules/openai.bicep"), "Microsoft.CognitiveServices/accounts")["properties"]["disableLocalAuth"]
        is True
    )


def test_outputs_give_the_app_and_page_urls():
    outputs = tree("main.bicep")["outputs"]
    assert render(outputs["FUNCTION_APP_URL"]["value"]) == "app.outputs.url"
    assert outputs["PAGE_URL"]["value"] == "${app.outputs.url}/"
    assert tree("modules/app.bicep")["outputs"]["url"]["value"] == "https://${app.properties.defaultHostName}"


# ---------------------------------------------------------------- checkov's Azure policies


@pytest.mark.timeout(360)  # checkov has 300 s of its own, and says more when it overruns
def test_checkov_finds_no_failed_checks_and_every_skip_is_justified(tmp_path):
    tools.checkov.require()
    binary = tools.checkov_binary()
    assert binary and binary.exists(), f"CHECKOV={binary} does not exist"
    report = tmp_path / "checkov"
    result = subprocess.run(
        [
            str(binary),
            "-d",
            str(INFRA),
            "--framework",
            "bicep",
            "--skip-download",
            "-o",
            "json",
            "--output-file-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    data = json.loads((report / "results_json.json").read_text())
    runs = data if isinstance(data, list) else [data]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})" for r in runs for c in r["results"]["failed_checks"]
    ]
    assert not failed, failed
    summary = runs[0]["summary"]
    assert summary["parsing_errors"] == 0 and summary["passed"] >= 15, summary
    for r in runs:
        for c in r["results"]["skipped_checks"]:
            reason = (c["check_result"].get("suppress_comment") or "").strip()
            assert len(reason) > 20, f"{c['check_id']} skipped without a reason"
    assert result.returncode == 0


def test_deploy_workflow_signs_in_with_oidc_and_stores_no_secret():
    workflow = (ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    assert re.search(r"^\s+id-token: write", workflow, re.M)
    assert "--federated-credential-provider github" in workflow
    assert "secrets." not in workflow, "ids come from repository variables; nothing secret is stored"
    assert "tests/test_infra.py" in workflow, "templates are checked before anything is provisioned"
