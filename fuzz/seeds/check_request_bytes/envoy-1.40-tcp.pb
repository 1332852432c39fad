
Ϊ
@

	127.0.0.1όν"+spiffe://cluster.local/ns/team-a/sa/billing{

	127.0.0.1‹api.allowed.example.com"Mspiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-accountb
api.allowed.example.com