// The function app on a Flex Consumption plan, its storage, monitoring and the roles its identity needs.
// Nothing here uses a key: storage, the deployment container and Application Insights are reached with
// the app's managed identity, and shared-key / local auth is switched off where the service allows it.
param location string
param tags object
param resourceToken string
param useUserAssignedIdentity bool
param httpPerInstanceConcurrency int
param maximumInstanceCount int
param logRetentionDays int
param openAiBaseUrl string
param openAiDeploymentName string
param allowedOrigins string
param connectAuthLevel string
param transcriptionModel string
param rateLimitPerMinute int
param rateLimitBurst int
param maxSessionSeconds int
param maxActiveSessions int
param supervisorMode string
param searchEndpoint string
param searchIndex string
param serverTranscripts string
param transcriptRetentionDays int
param zoneRedundant bool

var appName = 'func-${resourceToken}'
var deploymentContainerName = 'app-package'

// Built-in role definition ids.
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource userIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (useUserAssignedIdentity) {
  name: 'id-${resourceToken}'
  location: location
  tags: tags
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'st${resourceToken}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    // checkov:skip=CKV_AZURE_206: Host state and the deployment package are rebuilt by a redeploy; geo-replication would only add cost.
    // checkov:skip=CKV_AZURE_59: Flex Consumption without VNet integration reaches storage over its public endpoint; shared keys are off, so only Entra identities with a role get in.
    // checkov:skip=CKV_AZURE_35: No VNet in this template, so the Flex app reaches storage over the internet; with shared keys off, only identities holding a role get in.
    // checkov:skip=CKV_AZURE_43: The name is 'st' + uniqueString(): 15 lowercase letters and digits, within the rules; the check cannot evaluate the expression.
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

// Transcripts are personal data: kept no longer than transcriptRetentionDays after their last line.
resource transcriptRetention 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (serverTranscripts == 'blob') {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'delete-old-transcripts'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: ['appendBlob']
              prefixMatch: ['transcripts/']
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: transcriptRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

// Flex Consumption runs the app from a package in this container (written by azd / func publish).
resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    // Telemetry is accepted only with an Entra token (the app's identity, Monitoring Metrics Publisher),
    // so the connection string's instrumentation key alone cannot write to it.
    DisableLocalAuth: true
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    // checkov:skip=CKV_AZURE_225: Off by default (parameter zoneRedundant): on Flex it keeps two always-ready instances billed and only some regions offer it.
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

// Flex Consumption sets FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION from functionAppConfig.runtime
// and rejects them as app settings. Worker concurrency (PYTHON_THREADPOOL_THREAD_COUNT,
// FUNCTIONS_WORKER_PROCESS_COUNT) is deliberately not set until the benchmark decides it; if it is, it goes
// in commonSettings, next to the per-instance HTTP concurrency it has to agree with.
var commonSettings = [
  // Host storage by identity: the account name, no connection string or key.
  { name: 'AzureWebJobsStorage__accountName', value: storage.name }
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  // Not a secret: an ingestion endpoint and id. With DisableLocalAuth only the identity's token authorizes writes.
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsights.properties.ConnectionString }
  { name: 'AZURE_OPENAI_BASE_URL', value: openAiBaseUrl }
  { name: 'AZURE_OPENAI_DEPLOYMENT', value: openAiDeploymentName }
  { name: 'ALLOWED_ORIGINS', value: allowedOrigins }
  { name: 'CONNECT_AUTH_LEVEL', value: connectAuthLevel }
  { name: 'REALTIME_TRANSCRIPTION_MODEL', value: transcriptionModel }
  { name: 'RATE_LIMIT_PER_MINUTE', value: string(rateLimitPerMinute) }
  { name: 'RATE_LIMIT_BURST', value: string(rateLimitBurst) }
  // Shared limits live in this storage account's table (the role above); the sweep enforces the session length.
  { name: 'REALTIME_MAX_SESSION_SECONDS', value: string(maxSessionSeconds) }
  { name: 'MAX_ACTIVE_SESSIONS', value: string(maxActiveSessions) }
  // Each admitted call goes through this account's queue to a supervisor (the queue role below).
  { name: 'REALTIME_SUPERVISOR', value: supervisorMode }
  // search_knowledge: Azure AI Search with the identity when both are set, else the embedded index of knowledge/.
  { name: 'AZURE_SEARCH_ENDPOINT', value: searchEndpoint }
  { name: 'AZURE_SEARCH_INDEX', value: searchIndex }
  // Call transcripts (off unless asked for) go to the container transcripts in this account: Blob Data Owner below.
  { name: 'REALTIME_SERVER_TRANSCRIPTS', value: serverTranscripts }
]

// With a user-assigned identity every consumer must be told which one: azure-identity (AZURE_CLIENT_ID),
// the host's storage client, and the Application Insights exporter.
var identitySettings = useUserAssignedIdentity ? [
  { name: 'AZURE_CLIENT_ID', value: userIdentity.properties.clientId }
  { name: 'AzureWebJobsStorage__clientId', value: userIdentity.properties.clientId }
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${userIdentity.properties.clientId};Authorization=AAD' }
] : [
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'Authorization=AAD' }
]

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  // azd deploys the `api` service of azure.yaml to the resource carrying this tag.
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    // The system identity always exists; with useUserAssignedIdentity the app authenticates as the user-assigned one.
    type: (useUserAssignedIdentity ? 'SystemAssigned, UserAssigned' : 'SystemAssigned')
    userAssignedIdentities: (useUserAssignedIdentity ? { '${userIdentity.id}': {} } : null)
  }
  properties: {
    // checkov:skip=CKV_AZURE_17: Browsers call /connect; they present no client certificates.
    // checkov:skip=CKV_AZURE_222: The page and /connect must be reachable from browsers on the internet.
    // checkov:skip=CKV_AZURE_16: identity.type is an expression (SystemAssigned, plus UserAssigned when chosen), which the check cannot read; an identity is always on.
    // checkov:skip=CKV_AZURE_212: Flex Consumption manages instance counts itself (scaleAndConcurrency); numberOfWorkers does not apply.
    // checkov:skip=CKV_AZURE_213: Flex Consumption does not offer the App Service health check; the platform replaces failed instances.
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // Empty on purpose: the app answers CORS itself from ALLOWED_ORIGINS (docs/embedding.md, "Origins (CORS)").
      cors: {
        allowedOrigins: []
      }
      appSettings: concat(commonSettings, identitySettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: (useUserAssignedIdentity ? 'UserAssignedIdentity' : 'SystemAssignedIdentity')
            userAssignedIdentityResourceId: (useUserAssignedIdentity ? userIdentity.id : null)
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: 2048
        maximumInstanceCount: maximumInstanceCount
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        // The version the test suite runs on.
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Part of each role assignment's name, so switching identity kinds creates new assignments instead of
// trying to re-point existing ones (which Azure refuses).
var identityKind = useUserAssignedIdentity ? 'user' : 'system'
var principalId = useUserAssignedIdentity ? userIdentity.properties.principalId : app.identity.principalId

// No FTP, no publishing user/password: deploy with an Entra identity (azd, func publish, OIDC in CI).
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'scm'
  properties: {
    allow: false
  }
}

// Host storage (AzureWebJobsStorage) and the deployment package: the Functions host needs Blob Data Owner. The
// app's call transcripts (REALTIME_SERVER_TRANSCRIPTS=blob) use it too: it creates their container and appends.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: storage
  name: guid(storage.id, app.id, storageBlobDataOwner, identityKind)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Shared (cross-instance) limits are kept in Table Storage in this account.
resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: storage
  name: guid(storage.id, app.id, storageTableDataContributor, identityKind)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Admitted calls reach their supervisors through a queue in this account (REALTIME_SUPERVISOR_QUEUE): /connect
// writes with the queue output binding, the queue trigger reads, and poison messages are moved, all by identity.
resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: storage
  name: guid(storage.id, app.id, storageQueueDataContributor, identityKind)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Entra-authenticated telemetry (APPLICATIONINSIGHTS_AUTHENTICATION_STRING) needs this role on the component.
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: appInsights
  name: guid(appInsights.id, app.id, monitoringMetricsPublisher, identityKind)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output name string = app.name
output url string = 'https://${app.properties.defaultHostName}'
output principalId string = principalId
