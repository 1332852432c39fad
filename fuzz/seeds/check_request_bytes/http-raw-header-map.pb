
÷
@

	127.0.0.1úâ"+spiffe://cluster.local/ns/team-a/sa/billingb

	127.0.0.1†ç"Mspiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"íè
5026315963086189944GET2httpsRHTTP/1.1j·
%

:authorityapi.allowed.example.com

:methodGET

:path/get?x=1

:schemehttps

accept-encodingidentity
%
x-envoy-external-address	127.0.0.1


x-fooa
´
x-forwarded-client-certèBy=spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account;Hash=544897a0cbaf2d45df55d7af54ed374aa2e5864612c51d1d483fb2...

x-forwarded-for	192.0.2.2

x-forwarded-protohttps

x-remove-mesecret
4
x-request-id$a7b80ec6-9bfc-4363-bae9-01d88e5bd344b
api.allowed.example.com