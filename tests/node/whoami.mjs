// Resolve credentials the way the Node.js SDK does for a container endpoint
// (AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE),
// then prove them with STS GetCallerIdentity against AWS_ENDPOINT_URL_STS.
import { fromHttp } from "@aws-sdk/credential-provider-http";
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";

const credentials = fromHttp({});
const sts = new STSClient({
  region: process.env.AWS_REGION || "us-east-1",
  endpoint: process.env.AWS_ENDPOINT_URL_STS,
  credentials,
});
const resolved = await credentials();
const identity = await sts.send(new GetCallerIdentityCommand({}));
console.log(JSON.stringify({
  accessKeyId: resolved.accessKeyId,
  expiration: resolved.expiration?.toISOString(),
  arn: identity.Arn,
  account: identity.Account,
}));
