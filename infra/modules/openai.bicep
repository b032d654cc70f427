// A new Azure OpenAI resource with one realtime model deployment. Keys are disabled: the app reaches it
// only with its managed identity (Cognitive Services OpenAI User, granted in openai-role.bicep).
param name string
param location string
param tags object
param deploymentName string
param modelName string
param modelVersion string
param skuName string
param capacity int

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  name: name
  location: location
  tags: tags
  kind: 'OpenAI'
  sku: {
    name: 'S0'
  }
  // Unused by this app, but policies (checkov CKV_AZURE_238, Azure Policy) expect one and it costs nothing.
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    // Entra ID tokens are only accepted on a custom subdomain; it is also the app's base URL.
    customSubDomainName: name
    disableLocalAuth: true
    // checkov:skip=CKV_AZURE_134: The app on Flex Consumption (no VNet in this template) calls the resource over the internet; it accepts Entra tokens only (disableLocalAuth).
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
    }
  }
}

resource realtime 'Microsoft.CognitiveServices/accounts/deployments@2024-10-01' = {
  parent: account
  name: deploymentName
  sku: {
    name: skuName
    capacity: capacity
  }
  properties: {
    model: {
      format: 'OpenAI'
      name: modelName
      version: modelVersion
    }
    // Pinned version; moved only when this one retires, so voice behaviour does not change underfoot.
    versionUpgradeOption: 'OnceCurrentVersionExpired'
  }
}

output name string = account.name
output baseUrl string = 'https://${name}.openai.azure.com'
