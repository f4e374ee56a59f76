import asyncio
import websockets
import json

async def test_peer():
    uri = "ws://localhost:8765"
    async with websockets.connect(uri) as websocket:
        # Register
        await websocket.send(json.dumps({
            'msg_type': 'register_peer',
            'peer_id': 'test_peer_1',
            'capabilities': {'cpu_cores': 4, 'ram_gb': 8}
        }))
        
        print(f"Registered, waiting for tasks...")
        
        # Listen for tasks
        async for message in websocket:
            data = json.loads(message)
            
            if data['msg_type'] == 'task_assignment':
                print(f"Received task: {data['task_id']}")
                
                # Simulate processing
                await asyncio.sleep(0.1)
                
                # Return result
                await websocket.send(json.dumps({
                    'msg_type': 'task_result',
                    'task_id': data['task_id'],
                    'result': {'status': 'success', 'data': 'processed'}
                }))

asyncio.run(test_peer())
