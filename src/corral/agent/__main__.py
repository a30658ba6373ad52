from corral.agent.main import main

main()
