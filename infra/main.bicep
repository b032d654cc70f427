// azd entry point: one resource group holding a Flex Consumption function app that brokers gpt-realtime
// WebRTC sessions, keyless end to end (managed identity to storage, Application Insights and Azure OpenAI).
// Subscription scope so azd can create the group and the role can be granted on an Azure OpenAI resource
// that lives in another group.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; seeds every resource name.')
param environmentName string

@minLength(1)
@description('Region of the function app and everything but the Azure OpenAI resource (must offer Flex Consumption).')
@metadata({ azd: { type: 'location' } })
param location string

@description('Resource group to create; empty = rg-<environmentName>.')
param resourceGroupName string = ''

// ---- Azure OpenAI: bring your own, or let this template create one ----
@description('Resource id of an existing Azure OpenAI (or AI Services) account to use; empty = create one here.')
param existingOpenAiResourceId string = ''

@description('Deployment name the app sends as session.model (AZURE_OPENAI_DEPLOYMENT); created when no existing resource is given.')
param openAiDeploymentName string = 'gpt-realtime'

@description('Region of a new Azure OpenAI resource: one where the realtime model is offered with the chosen SKU.')
param openAiLocation string = 'eastus2'

@description('Model of a new realtime deployment.')
param realtimeModelName string = 'gpt-realtime'

@description('Model version of a new realtime deployment.')
param realtimeModelVersion string = '2025-08-28'

@description('SKU of a new realtime deployment.')
param realtimeDeploymentSku string = 'GlobalStandard'

@minValue(1)
@description('Capacity units of a new realtime deployment; the region\'s quota for the model and SKU must cover it.')
param realtimeDeploymentCapacity int = 10

// ---- Identity ----
@description('true: create a user-assigned identity and use it for storage, monitoring and Azure OpenAI (sets AZURE_CLIENT_ID); false: the app\'s system-assigned identity.')
param useUserAssignedIdentity bool = false

// ---- Scale: /connect is an async, I/O-bound broker, so one instance serves many concurrent requests ----
@minValue(1)
@maxValue(1000)
@description('Flex Consumption HTTP concurrency per instance before the platform adds an instance.')
param httpPerInstanceConcurrency int = 64

@minValue(1)
@maxValue(1000)
@description('Upper bound on instances: caps cost and the per-instance rate limit multiplier.')
param maximumInstanceCount int = 40

// ---- App settings the code reads (see realtime_proxy/settings.py) ----
@description('ALLOWED_ORIGINS: comma-separated browser origins allowed to call /connect; empty = same origin only.')
param allowedOrigins string = ''

@allowed(['anonymous', 'function'])
@description('CONNECT_AUTH_LEVEL: function = POST /connect needs a Functions key.')
param connectAuthLevel string = 'anonymous'

@description('REALTIME_TRANSCRIPTION_MODEL: transcription model for the user\'s words; none = off.')
param transcriptionModel string = 'whisper-1'

@minValue(0)
@description('RATE_LIMIT_PER_MINUTE per client per instance; 0 = off.')
param rateLimitPerMinute int = 30

@minValue(1)
@description('RATE_LIMIT_BURST per client per instance.')
param rateLimitBurst int = 10

@minValue(0)
@maxValue(3600)
@description('REALTIME_MAX_SESSION_SECONDS: the app hangs a call up this long after it started (0: the service\'s own 60 minutes).')
param maxSessionSeconds int = 0

@minValue(0)
@description('MAX_ACTIVE_SESSIONS: live sessions at once for the whole app (0: no cap).')
param maxActiveSessions int = 0

@allowed(['off', 'observe', 'enforce'])
@description('REALTIME_SUPERVISOR: a sideband supervisor in every call (docs/supervisor.md): enforce holds the session the server decided, observe only logs and counts; both end calls on time and meter usage.')
param supervisorMode string = 'enforce'
// ---- Optional: Azure AI Search behind the search_knowledge tool (docs/tools.md) ----
@description('Resource id of an existing Azure AI Search service for search_knowledge; empty = the embedded index of knowledge/.')
param existingSearchResourceId string = ''

@description('AZURE_SEARCH_INDEX: the index search_knowledge queries in that service.')
param searchIndexName string = ''
@allowed(['off', 'blob'])
@description('REALTIME_SERVER_TRANSCRIPTS: blob = each supervised call\'s user and assistant words as JSON lines in the app\'s storage account, container transcripts (docs/transcripts.md). Off by default: transcripts are personal data.')
param serverTranscripts string = 'off'

@minValue(1)
@maxValue(3650)
@description('With serverTranscripts = blob: a lifecycle rule deletes each transcript this many days after its last line.')
param transcriptRetentionDays int = 30

@description('Spread instances over availability zones. Off by default: on Flex it keeps at least two always-ready instances (billed) and only some regions offer it.')
param zoneRedundant bool = false

@minValue(30)
@maxValue(730)
@description('Log Analytics retention in days.')
param logRetentionDays int = 30

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var useExistingOpenAi = !empty(existingOpenAiResourceId)
// /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/accounts/{name}
var existingParts = split(existingOpenAiResourceId, '/')
var openAiSubscriptionId = useExistingOpenAi ? existingParts[2] : subscription().subscriptionId
var openAiResourceGroup = useExistingOpenAi ? existingParts[4] : rg.name
var openAiAccountName = useExistingOpenAi ? last(existingParts) : 'oai-${resourceToken}'
var useSearch = !empty(existingSearchResourceId)
var searchParts = split(existingSearchResourceId, '/')
var searchServiceName = useSearch ? last(searchParts) : ''

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

// Read only to learn its custom subdomain: keyless (Entra) calls need the https://<subdomain>.openai.azure.com host.
resource existingOpenAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  scope: resourceGroup(openAiSubscriptionId, openAiResourceGroup)
  name: openAiAccountName
}

module openAi 'modules/openai.bicep' = if (!useExistingOpenAi) {
  name: 'openai'
  scope: rg
  params: {
    name: openAiAccountName
    location: openAiLocation
    tags: tags
    deploymentName: openAiDeploymentName
    modelName: realtimeModelName
    modelVersion: realtimeModelVersion
    skuName: realtimeDeploymentSku
    capacity: realtimeDeploymentCapacity
  }
}

var openAiBaseUrl = useExistingOpenAi ? 'https://${existingOpenAi.properties.customSubDomainName}.openai.azure.com' : openAi.outputs.baseUrl

module app 'modules/app.bicep' = {
  name: 'app'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    useUserAssignedIdentity: useUserAssignedIdentity
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    maximumInstanceCount: maximumInstanceCount
    logRetentionDays: logRetentionDays
    openAiBaseUrl: openAiBaseUrl
    openAiDeploymentName: openAiDeploymentName
    allowedOrigins: allowedOrigins
    connectAuthLevel: connectAuthLevel
    transcriptionModel: transcriptionModel
    rateLimitPerMinute: rateLimitPerMinute
    rateLimitBurst: rateLimitBurst
    maxSessionSeconds: maxSessionSeconds
    maxActiveSessions: maxActiveSessions
    supervisorMode: supervisorMode
    searchEndpoint: useSearch ? 'https://${searchServiceName}.search.windows.net' : ''
    searchIndex: useSearch ? searchIndexName : ''
    serverTranscripts: serverTranscripts
    transcriptRetentionDays: transcriptRetentionDays
    zoneRedundant: zoneRedundant
  }
}

// Cognitive Services OpenAI User on the resource (new or existing, wherever it lives) for the app's identity:
// enough to mint client secrets and create calls, nothing more (no key listing, no deployment changes).
module openAiRole 'modules/openai-role.bicep' = {
  name: 'openai-role'
  scope: resourceGroup(openAiSubscriptionId, openAiResourceGroup)
  dependsOn: [openAi]
  params: {
    accountName: openAiAccountName
    principalId: app.outputs.principalId
  }
}

// Search Index Data Reader on the Azure AI Search service, only when one is given.
module searchRole 'modules/search-role.bicep' = if (useSearch) {
  name: 'search-role'
  scope: resourceGroup(useSearch ? searchParts[2] : subscription().subscriptionId, useSearch ? searchParts[4] : rg.name)
  params: {
    serviceName: searchServiceName
    principalId: app.outputs.principalId
  }
}

// Everything here is a name or a URL: no key, connection string or secret is ever an output.
output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.name
output AZURE_OPENAI_BASE_URL string = openAiBaseUrl
output AZURE_OPENAI_DEPLOYMENT string = openAiDeploymentName
output FUNCTION_APP_URL string = app.outputs.url
output PAGE_URL string = '${app.outputs.url}/'
output CONNECT_URL string = '${app.outputs.url}/connect'
