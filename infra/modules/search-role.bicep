// Grants the app's identity "Search Index Data Reader" on an Azure AI Search service, wherever it lives: what the
// search_knowledge tool needs to query an index (docs/tools.md), nothing more (no writes, no keys, no admin).
// The service must accept Entra tokens (authOptions: aadOrApiKey, or local auth off).
param serviceName string
@description('Object id of the managed identity the app authenticates with.')
param principalId string

var searchIndexDataReader = '1407120a-92aa-4202-b7e9-c0e197c71c8f'

resource search 'Microsoft.Search/searchServices@2023-11-01' existing = {
  name: serviceName
}

resource indexReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: search
  name: guid(search.id, principalId, searchIndexDataReader)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', searchIndexDataReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
