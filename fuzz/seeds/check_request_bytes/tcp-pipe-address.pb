
г
@

	127.0.0.1ьн"+spiffe://cluster.local/ns/team-a/sa/billingГ

/var/run/gateway.sockapi.allowed.example.com"Mspiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-accountb
api.allowed.example.com