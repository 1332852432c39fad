
†
@

	127.0.0.1όν"+spiffe://cluster.local/ns/team-a/sa/billing{

	127.0.0.1‹api.allowed.example.com"Mspiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-accountbE
Coutbound_.443_._.istio-egressgateway.istio-system.svc.cluster.local