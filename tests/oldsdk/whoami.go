// whoami: Debian's AWS SDK for Go v2 (golang-github-aws-aws-sdk-go-v2-dev: aws 1.17.1,
// config 1.17.10) as a consumer of credd's endpoint, for tests/test_old_sdks.py, which
// builds it offline in GOPATH mode against /usr/share/gocode.
//
// It resolves credentials with the SDK's default chain from the environment alone, then
// proves them with STS GetCallerIdentity against the URL given as the only argument (this
// SDK predates AWS_ENDPOINT_URL). Its container provider (config/env_config.go,
// config/resolve_credentials.go) sends the value of AWS_CONTAINER_AUTHORIZATION_TOKEN;
// it predates AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE and never reads that file.
//
// It prints one JSON line: {"accessKeyId", "source", "arn", "account", "version"} on
// success, or {"failed": "config" | "credentials" | "sts", "message", "status"} with exit
// status 3; "status" is the container endpoint's HTTP status (0 if none came).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/endpointcreds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// The SDK's error for a refused fetch keeps the body's code but not the HTTP status,
// which the test needs (401 and 403 mean different things); this watches the response.
var endpointStatus int

func recordStatus(stack *middleware.Stack) error {
	return stack.Deserialize.Add(middleware.DeserializeMiddlewareFunc("recordStatus",
		func(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (
			middleware.DeserializeOutput, middleware.Metadata, error,
		) {
			out, metadata, err := next.HandleDeserialize(ctx, in)
			if response, ok := out.RawResponse.(*smithyhttp.Response); ok {
				endpointStatus = response.StatusCode
			}
			return out, metadata, err
		}), middleware.After)
}

func fail(step string, err error) {
	out, _ := json.Marshal(map[string]interface{}{
		"failed": step, "message": err.Error(), "status": endpointStatus,
	})
	fmt.Println(string(out))
	os.Exit(3)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: whoami STS_URL")
		os.Exit(2)
	}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx,
		config.WithEndpointCredentialOptions(func(o *endpointcreds.Options) {
			o.APIOptions = append(o.APIOptions, recordStatus)
		}))
	if err != nil {
		fail("config", err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		fail("credentials", err)
	}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.EndpointResolver = sts.EndpointResolverFromURL(os.Args[1])
	})
	identity, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		fail("sts", err)
	}
	out, _ := json.Marshal(map[string]string{
		"accessKeyId": creds.AccessKeyID,
		"source":      creds.Source,
		"arn":         *identity.Arn,
		"account":     *identity.Account,
		"version":     aws.SDKVersion,
	})
	fmt.Println(string(out))
}
