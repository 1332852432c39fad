
“
@

	127.0.0.1úâ"+spiffe://cluster.local/ns/team-a/sa/billingb

	127.0.0.1†ç"Mspiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"éã
5026315963086189944GET
x-forwarded-for	192.0.2.24
x-request-id$a7b80ec6-9bfc-4363-bae9-01d88e5bd344
:methodGET%
x-envoy-external-address	127.0.0.1
x-forwarded-protohttps
x-remove-mesecret
accept-encodingidentity
:path/get?x=1

x-fooa
:schemehttps

:authority0x7f.1:18080´
x-forwarded-client-certèBy=spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account;Hash=544897a0cbaf2d45df55d7af54ed374aa2e5864612c51d1d483fb2..."/get?x=12httpsRHTTP/1.1b
api.allowed.example.com